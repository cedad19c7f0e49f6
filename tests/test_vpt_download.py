"""`dreamer4 vpt-download` against a real HTTP server on 127.0.0.1 serving VPT segments written
by the real writer: byte-identical files, missing segments, cuts resumed with Range, reruns,
concurrency, a failing server and bad index files; nothing torn is ever where readers look."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dreamer4.cli import build_parser, main
from dreamer4.episodes.readers import find_raw_episodes, read_raw_episode
from dreamer4.episodes.vpt import read_vpt_episode, vpt_line, write_vpt_episode
from dreamer4.errors import StageError
from dreamer4.vpt_download import file_url, run, segment_stem
from tests.conftest import vpt_frames

FAST = ["--retry-delay", "0.001", "--timeout", "10"]
PREFIX = "/minecraft-rl/"


class BlobStore:
    """What the handler serves (files under `root` at `PREFIX`), what it saw, what goes wrong."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.basedir = ""
        self.lock = threading.Lock()
        self.gets: Counter[str] = Counter()
        self.ranges: defaultdict[str, list[str]] = defaultdict(list)
        self.cut_once: set[str] = set()  # first GET: half the body, full Content-Length, close
        self.fail: set[str] = set()  # always HTTP 500
        self.stall_once: set[str] = set()  # first GET: no answer for a second
        self.ignore_range = False
        self.on_range: Callable[[str], None] | None = None
        self.delay = 0.0
        self.in_flight = self.peak = 0

    def url_path(self, stem: str, suffix: str) -> str:
        return PREFIX + stem + suffix

    def file(self, stem: str, suffix: str) -> Path:
        return self.root / (stem + suffix)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        store: BlobStore = self.server.store  # type: ignore[attr-defined]
        path = urllib.parse.unquote(self.path)
        with store.lock:
            store.gets[path] += 1
            first = store.gets[path] == 1
            store.in_flight += 1
            store.peak = max(store.peak, store.in_flight)
        try:
            self.answer(store, path, first)
        finally:
            with store.lock:
                store.in_flight -= 1

    def answer(self, store: BlobStore, path: str, first: bool) -> None:
        wanted = self.headers.get("Range")
        if wanted:
            store.ranges[path].append(wanted)
            if store.on_range:
                store.on_range(path)
        time.sleep(1.0 if first and path in store.stall_once else store.delay)
        file = store.root / path.removeprefix(PREFIX)
        if path in store.fail:
            self.send_error(500)
            return
        if not path.startswith(PREFIX) or not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        if wanted and not store.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if first and path in store.cut_once:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlobStore]:
    blobs = BlobStore(tmp_path / "server")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.store = blobs  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    blobs.basedir = f"http://127.0.0.1:{httpd.server_address[1]}{PREFIX}"
    try:
        yield blobs
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def serve(store: BlobStore, stem: str, seed: int, frames: int = 8, options: bool = False) -> str:
    """A segment on the server, written as the contractor recorder does; returns its stem."""
    lines = [
        vpt_line({"forward"} if t % 2 else {"jump", "attack"}, camera_deg=(0.0, 1.5 * t))
        for t in range(frames)
    ]
    write_vpt_episode(store.root, stem, vpt_frames(frames, seed), lines)
    if options:
        opts = {"version": "7.1", "seed": seed}
        store.file(stem, "-options.json").write_text(json.dumps(opts))
    return stem


def write_index(path: Path, basedir: str, relpaths: list[str]) -> Path:
    path.write_text(json.dumps({"basedir": basedir, "relpaths": relpaths}))
    return path


def download(index: Path, out: Path, *extra: str) -> int:
    args = build_parser("vpt-download").parse_args(
        ["vpt-download", "--index", str(index), "--out", str(out), *FAST, *extra]
    )
    return run(args)


def visible(out: Path) -> list[str]:
    """Files where readers look: everything outside hidden folders."""
    return sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(out).parts)
    )


def assert_identical(store: BlobStore, out: Path, stem: str, options: bool) -> None:
    for suffix in (".mp4", ".jsonl"):
        assert (out / (stem + suffix)).read_bytes() == store.file(stem, suffix).read_bytes()
    mine = out / (stem + "-options.json")
    if options:
        assert mine.read_bytes() == store.file(stem, "-options.json").read_bytes()
    else:
        assert not mine.exists()


@pytest.mark.parametrize("slash", ["/", ""], ids=["basedir-slash", "basedir-no-slash"])
def test_full_download_is_byte_identical_and_readable(
    store: BlobStore, tmp_path: Path, slash: str
) -> None:
    segments = {
        serve(store, "data/6.13/cheeky-cornflower-setter-02e496ce4abb-20220421-092639", 0): False,
        serve(store, "data/6.13/plain-name-without-extension", 1, options=True): True,
        serve(store, "data/7.1/other-folder-seg", 2, frames=6, options=True): True,
    }
    stems = list(segments)
    relpaths = [stems[0] + ".mp4", stems[1], stems[2] + ".mp4"]
    index = write_index(tmp_path / "all_6xx.json", store.basedir.rstrip("/") + slash, relpaths)
    out = tmp_path / "vpt"

    assert download(index, out) == 0

    for stem, options in segments.items():
        assert_identical(store, out, stem, options)
    raw = find_raw_episodes(out)
    assert [r.id for r in raw] == sorted(stems)
    for r in raw:
        ep = read_raw_episode(r, 16)
        assert ep.source == "vpt" and ep.frames.shape[1:] == (16, 16, 3)
    ep = read_vpt_episode(out / (stems[2] + ".mp4"), out / (stems[2] + ".jsonl"), None)
    assert len(ep.frames) == 6 and ep.records == 6
    assert not (out / ".partial").exists()
    assert (out / "missing.txt").read_text() == ""
    # one GET per file (the absent -options.json included), none twice
    assert set(store.gets.values()) == {1} and len(store.gets) == 3 * len(stems)
    assert not store.ranges


def test_missing_segments_are_reported_not_failed(
    store: BlobStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = serve(store, "data/6.13/good", 0)
    no_video = serve(store, "data/6.13/no-video", 1)
    store.file(no_video, ".mp4").unlink()
    ghost = "data/6.13/ghost-segment"
    index = write_index(tmp_path / "index.json", store.basedir, [ghost, good, no_video + ".mp4"])
    out = tmp_path / "vpt"

    argv = ["vpt-download", "--index", str(index), "--out", str(out), *FAST]
    assert main(argv) == 0

    assert (out / "missing.txt").read_text() == f"{ghost}\n{no_video}\n"
    assert [r.id for r in find_raw_episodes(out)] == [good]
    assert visible(out) == sorted([good + ".jsonl", good + ".mp4", "missing.txt"])
    assert not (out / ".partial").exists()  # the fetched .jsonl of the video-less one is gone
    assert store.gets[store.url_path(ghost, ".jsonl")] == 1  # 404: no retry
    assert store.gets[store.url_path(ghost, ".mp4")] == 0  # no video fetched for it
    assert "1 downloaded" in capsys.readouterr().out


def test_cut_mid_file_resumes_with_range_and_nothing_torn_is_visible(
    store: BlobStore, tmp_path: Path
) -> None:
    stem = serve(store, "data/6.13/cut-seg", 0, frames=12, options=True)
    video = store.url_path(stem, ".mp4")
    store.cut_once = {video}
    out = tmp_path / "vpt"
    seen: list[tuple[list[str], list[str], int]] = []
    part = out / ".partial" / (stem + ".mp4.part")
    # the retry's Range request arrives while the cut file is still partial
    store.on_range = lambda path: seen.append(
        ([r.id for r in find_raw_episodes(out)], visible(out), part.stat().st_size)
    )
    index = write_index(tmp_path / "index.json", store.basedir, [stem])

    assert download(index, out) == 0

    size = store.file(stem, ".mp4").stat().st_size
    assert store.ranges[video] == [f"bytes={size // 2}-"]
    assert seen == [([], [], size // 2)]
    assert store.gets[video] == 2
    assert_identical(store, out, stem, options=True)
    assert len(read_vpt_episode(out / (stem + ".mp4"), out / (stem + ".jsonl"), None).frames) == 12


def test_interrupted_run_resumes_on_the_next(store: BlobStore, tmp_path: Path) -> None:
    stem = serve(store, "data/6.13/resumed", 0, frames=12)
    video, actions = store.url_path(stem, ".mp4"), store.url_path(stem, ".jsonl")
    store.cut_once = {video}
    index = write_index(tmp_path / "index.json", store.basedir, [stem])
    out = tmp_path / "vpt"

    with pytest.raises(StageError, match=re.escape(stem)):
        download(index, out, "--retries", "0")
    assert find_raw_episodes(out) == [] and visible(out) == ["missing.txt"]
    size = store.file(stem, ".mp4").stat().st_size
    assert (out / ".partial" / (stem + ".mp4.part")).stat().st_size == size // 2
    assert (out / ".partial" / (stem + ".jsonl")).is_file()  # complete, kept aside

    assert download(index, out) == 0
    assert store.ranges[video] == [f"bytes={size // 2}-"]
    assert store.gets[actions] == 1  # the complete .jsonl was not fetched again
    assert_identical(store, out, stem, options=False)
    assert not (out / ".partial").exists()


@pytest.mark.parametrize("case", ["complete-part", "server-ignores-range"])
def test_partial_file_edge_cases(store: BlobStore, tmp_path: Path, case: str) -> None:
    stem = serve(store, "data/6.13/edge", 0)
    data = store.file(stem, ".mp4").read_bytes()
    out = tmp_path / "vpt"
    part = out / ".partial" / (stem + ".mp4.part")
    part.parent.mkdir(parents=True)
    if case == "complete-part":  # interrupted after the last byte: 416 says it is whole
        part.write_bytes(data)
    else:  # a 200 answer to a Range request: start over, append nothing
        part.write_bytes(data[:10])
        store.ignore_range = True
    had = part.stat().st_size
    index = write_index(tmp_path / "index.json", store.basedir, [stem])

    assert download(index, out) == 0

    video = store.url_path(stem, ".mp4")
    assert store.ranges[video] == [f"bytes={had}-"] and store.gets[video] == 1
    assert_identical(store, out, stem, options=False)


def test_timeout_is_retried(store: BlobStore, tmp_path: Path) -> None:
    stem = serve(store, "data/6.13/slow", 0)
    store.stall_once = {store.url_path(stem, ".jsonl")}
    index = write_index(tmp_path / "index.json", store.basedir, [stem])
    out = tmp_path / "vpt"

    start = time.monotonic()
    assert download(index, out, "--timeout", "0.2") == 0

    assert time.monotonic() - start < 5
    assert store.gets[store.url_path(stem, ".jsonl")] == 2
    assert_identical(store, out, stem, options=False)


def test_rerun_downloads_nothing_twice(store: BlobStore, tmp_path: Path) -> None:
    stems = [serve(store, f"data/6.13/seg-{i}", i, options=i == 1) for i in range(3)]
    index = write_index(tmp_path / "index.json", store.basedir, stems)
    out = tmp_path / "vpt"
    assert download(index, out) == 0
    store.gets.clear()

    assert download(index, out) == 0

    assert sum(store.gets.values()) == 0
    for i, stem in enumerate(stems):
        assert_identical(store, out, stem, options=i == 1)


def test_max_and_jobs(store: BlobStore, tmp_path: Path) -> None:
    stems = [serve(store, f"data/6.13/seg-{i}", i, frames=4) for i in range(6)]
    index = write_index(tmp_path / "index.json", store.basedir, stems)
    out = tmp_path / "vpt"
    store.delay = 0.05  # requests overlap when segments run at once

    assert download(index, out, "--max", "4", "--jobs", "3") == 0

    assert [r.id for r in find_raw_episodes(out)] == stems[:4]
    assert not any(path.startswith(PREFIX + s) for path in store.gets for s in stems[4:])
    assert 2 <= store.peak <= 3


def test_failing_server_is_a_named_failure_and_leaves_nothing_torn(
    store: BlobStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = serve(store, "data/6.13/fine", 0)
    bad = serve(store, "data/6.13/broken-one", 1)
    store.fail = {store.url_path(bad, ".mp4")}
    index = write_index(tmp_path / "index.json", store.basedir, [good, bad])
    out = tmp_path / "vpt"

    argv = ["vpt-download", "--index", str(index), "--out", str(out), *FAST, "--retries", "2"]
    assert main(argv) != 0

    err = capsys.readouterr().err
    assert bad in err and "HTTP 500" in err and good not in err
    assert store.gets[store.url_path(bad, ".mp4")] == 3  # the first try and 2 retries
    assert [r.id for r in find_raw_episodes(out)] == [good]
    assert not any(name.startswith(bad) for name in visible(out))
    with pytest.raises(StageError, match=re.escape(bad)):
        download(index, out, "--retries", "1")


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{not json", "not a JSON"),
        ("[]", "'basedir' and 'relpaths'"),
        ('{"relpaths": []}', "'basedir'"),
        ('{"basedir": "https://example.org/"}', "'relpaths'"),
        ('{"basedir": 5, "relpaths": []}', "'basedir'"),
        ('{"basedir": "/local/dir", "relpaths": []}', "'basedir'"),
        ('{"basedir": "https://example.org/", "relpaths": "a.mp4"}', "'relpaths'"),
        ('{"basedir": "https://example.org/", "relpaths": ["a.mp4", 3]}', "relpaths[1]"),
        ('{"basedir": "https://example.org/", "relpaths": ["../up.mp4"]}', "relpaths[0]"),
        ('{"basedir": "https://example.org/", "relpaths": ["/abs.mp4"]}', "relpaths[0]"),
        ('{"basedir": "https://example.org/", "relpaths": ["a/.hidden"]}', "relpaths[0]"),
    ],
)
def test_malformed_index_names_file_and_key(tmp_path: Path, content: str, named: str) -> None:
    index = tmp_path / "bad-index.json"
    index.write_text(content)
    with pytest.raises(StageError, match=re.escape(str(index))) as err:
        download(index, tmp_path / "vpt")
    assert named in str(err.value)
    assert not (tmp_path / "vpt").exists()


def test_missing_index_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = tmp_path / "nowhere.json"
    assert main(["vpt-download", "--index", str(index), "--out", str(tmp_path / "o")]) == 2
    assert str(index) in capsys.readouterr().err


def test_urls_and_stems() -> None:
    stem = segment_stem("data/6.13/a b.mp4")
    assert stem == "data/6.13/a b" and segment_stem("data/x") == "data/x"
    for base in ("https://h/minecraft-rl/", "https://h/minecraft-rl"):
        assert file_url(base, stem, ".jsonl") == "https://h/minecraft-rl/data/6.13/a%20b.jsonl"


def test_help_documents_options_and_minecraft_use(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser("vpt-download").parse_args(["vpt-download", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--index", "--out", "--max", "--jobs", "--retries", "--retry-delay"):
        assert option in text
    flat = " ".join(text.split())
    for fact in ("Video-Pre-Training", "all_6xx_Jun_29.json", "all_7xx_Apr_6.json", "tens of MB"):
        assert fact in flat
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "vpt-download" in capsys.readouterr().out
