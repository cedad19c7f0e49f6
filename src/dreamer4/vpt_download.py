"""`dreamer4 vpt-download`: OpenAI's VPT contractor recordings → the layout `collect` imports.

An index file (`{"basedir": URL, "relpaths": [...]}`) lists segments; each is `<stem>.mp4` +
`<stem>.jsonl` (+ `<stem>-options.json` where the server has one), saved as `OUT/<stem>...`,
which `collect` imports with `env: vpt`, `source: OUT`. A `.mp4` or `.jsonl` the server answers
404 for makes the segment missing (listed in `OUT/missing.txt`), not a failure.

Never torn: files download into `OUT/.partial/` (hidden, so `find_raw_episodes` skips it) as
`<name>.part`, are checked against Content-Length (Content-Range on a resume), renamed `<name>`
there once complete, and a segment's files move into place (os.replace, same filesystem) only
once all of them are complete, the `.mp4` last: an `.mp4` alone would pass for unlabelled video,
while a `.jsonl` without its video is an error that names it.

Resumable: a segment whose `.mp4` and `.jsonl` are in place is skipped without a request, a
complete file in `.partial/` is not fetched again, and a `.part` continues with
`Range: bytes=N-` (206 appends, 200 starts over, 416 with total N means it was complete).

HTTP through urllib (standard library), not requests: a GET with a Range header and a timeout,
its body read in chunks, is all this needs; a cut body shows as bytes short of Content-Length
(requests' `iter_content` drops the chunk it was filling when the cut comes); and requests'
pooled connections would save one TLS handshake per file, nothing next to tens of MB of video.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from dreamer4.errors import StageError
from dreamer4.files import atomic_write_text

PARTIAL = ".partial"
FETCH_ORDER = (".jsonl", "-options.json", ".mp4")  # small first: a missing segment costs little
MOVE_ORDER = ("-options.json", ".jsonl", ".mp4")  # the video last
REQUIRED = frozenset({".jsonl", ".mp4"})
CHUNK = 1 << 20
USER_AGENT = "dreamer4-vpt-download"
# errors of the network or the server that another try may not meet
RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
             ssl.SSLError)  # fmt: skip
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MISSING_STATUS = frozenset({404, 410})
SHOWN_FAILURES = 10

EPILOG = """\
Minecraft: OpenAI's Video-Pre-Training repository (github.com/openai/Video-Pre-Training)
publishes the index files of its contractor data, one per version of the collection task, e.g.
all_6xx_Jun_29.json, all_7xx_Apr_6.json, ... (at
https://openaipublic.blob.core.windows.net/minecraft-rl/snapshots/<name>). Then set `env: vpt`
and `source: OUT` in the profile's collect block (or `dreamer4 collect --source OUT`).

Disk: a 5-minute 360p segment is on the order of tens of MB, and an index lists many of them.
Try --max first, check what it took (du -sh OUT), then run the rest: segments already there
are skipped, an interrupted file resumes where it stopped.
"""


@dataclass(frozen=True)
class Retry:
    """How hard to try one file: `retries` after the first try, back-off delay × 2**k."""

    retries: int = 5
    delay: float = 1.0
    timeout: float = 60.0


@dataclass
class Summary:
    """Stems per outcome, in index order; `failed`: stem → why."""

    downloaded: list[str] = field(default_factory=list)
    there: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    nbytes: int = 0


class Missing(Exception):
    """The server has no such file (404/410)."""


class Transient(Exception):
    """This try failed in a way another try may not."""


class DownloadError(Exception):
    """A file that could not be fetched (retries spent, or an answer no retry changes)."""


class Stopped(Exception):
    """The run is stopping (Ctrl-C, an error elsewhere)."""


class ByteCounter:
    """Bytes received, summed across the download threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


# --- the index ------------------------------------------------------------------------------


def segment_stem(relpath: str) -> str:
    """The segment's path without `.mp4` (a relpath may or may not carry it)."""
    return relpath.removesuffix(".mp4")


def _check_stem(index: Path, i: int, relpath: Any) -> str:
    if not isinstance(relpath, str):
        raise StageError(f"{index}: relpaths[{i}] must be a string, got {relpath!r}")
    stem = segment_stem(relpath)
    pure = PurePosixPath(stem)
    # inside OUT, not hidden (find_raw_episodes would skip it), written one way only
    if (
        not stem
        or pure.is_absolute()
        or pure.as_posix() != stem
        or any(part in ("", ".", "..") or part.startswith(".") for part in pure.parts)
    ):
        raise StageError(f"{index}: relpaths[{i}] = {relpath!r} is not a relative path for OUT")
    return stem


def read_index(index: Path) -> tuple[str, list[str]]:
    """`basedir` and the segment stems of an index file (duplicates dropped, order kept)."""
    index = Path(index)
    if not index.is_file():
        raise StageError(f"{index}: index file does not exist")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StageError(f"{index}: not a JSON index file ({err})") from err
    if not isinstance(data, dict):
        raise StageError(f"{index}: must be a JSON object with keys 'basedir' and 'relpaths'")
    for key in ("basedir", "relpaths"):
        if key not in data:
            raise StageError(f"{index}: no key '{key}'")
    basedir, relpaths = data["basedir"], data["relpaths"]
    if not isinstance(basedir, str) or not re.match(r"https?://[^/]", basedir):
        raise StageError(f"{index}: 'basedir' must be an http(s) URL, got {basedir!r}")
    if not isinstance(relpaths, list):
        raise StageError(f"{index}: 'relpaths' must be a list, got {type(relpaths).__name__}")
    stems = [_check_stem(index, i, r) for i, r in enumerate(relpaths)]
    return basedir, list(dict.fromkeys(stems))


def file_url(basedir: str, stem: str, suffix: str) -> str:
    """`basedir` + `stem` + `suffix`, with one `/` between, the path percent-encoded."""
    return basedir.rstrip("/") + "/" + urllib.parse.quote(stem + suffix)


def local_path(root: Path, stem: str, suffix: str) -> Path:
    return Path(root) / (stem + suffix)


def is_complete(out: Path, stem: str) -> bool:
    """The segment's video and actions are in place (they are moved in last)."""
    return all(local_path(out, stem, s).is_file() for s in REQUIRED)


# --- one file -------------------------------------------------------------------------------


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of `bytes A-B/T` or `bytes */T`; None where absent or `*`."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    first, total = m.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def _content_length(headers: Any) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value and value.strip().isdigit() else None


def _refused(err: urllib.error.HTTPError, part: Path, offset: int) -> None:
    """An error status: missing, complete already (416 at the end), or why it failed."""
    with err:
        if err.code in MISSING_STATUS:
            raise Missing(f"HTTP {err.code}")
        if err.code == 416 and offset:
            _, total = _content_range(err.headers.get("Content-Range"))
            if total == offset:
                return
            part.unlink(missing_ok=True)  # the server's file is shorter: start over
            raise Transient(f"HTTP 416 at byte {offset} (file of {total} bytes); starting over")
        if err.code in RETRY_STATUS or err.code >= 500:
            raise Transient(f"HTTP {err.code} {err.reason}")
        raise DownloadError(f"HTTP {err.code} {err.reason}")


def _stream(resp: Any, part: Path, mode: str, stop: threading.Event, counter: ByteCounter) -> None:
    with open(part, mode) as f:
        while chunk := resp.read(CHUNK):
            if stop.is_set():
                raise Stopped
            f.write(chunk)
            counter.add(len(chunk))
        f.flush()
        os.fsync(f.fileno())


def fetch_once(
    url: str, part: Path, timeout: float, stop: threading.Event, counter: ByteCounter
) -> None:
    """One try at `part`: continue it from its size, or start over; raises unless complete."""
    offset = _size(part)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        _refused(err, part, offset)
        return
    with resp:
        if resp.status == 206:
            first, total = _content_range(resp.headers.get("Content-Range"))
            if first != offset:
                part.unlink(missing_ok=True)
                raise Transient(f"asked for byte {offset} on, got {first}; starting over")
            if total is None and (length := _content_length(resp.headers)) is not None:
                total = offset + length
            mode = "ab"
        else:  # 200 (a server that ignores Range starts over too)
            total, mode = _content_length(resp.headers), "wb"
        _stream(resp, part, mode, stop, counter)
    size = _size(part)
    if total is not None and size != total:
        if size > total:
            part.unlink(missing_ok=True)
        raise Transient(f"cut short: {size} of {total} bytes")


def fetch_file(
    url: str, dest: Path, retry: Retry, stop: threading.Event, counter: ByteCounter
) -> bool:
    """Fetch `url` to `dest` (through `dest.part`), retrying; False when the server has none.

    A try that got further than the last resets the back-off: only tries in a row that make no
    progress count against `retry.retries`.
    """
    if dest.is_file():
        return True
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        before = _size(part)
        try:
            fetch_once(url, part, retry.timeout, stop, counter)
        except Missing:
            return False
        except (Transient, *RETRYABLE) as err:
            if _size(part) > before:
                failures = 0
            if failures >= retry.retries:
                raise DownloadError(f"{url}: {_describe(err)}") from err
            if stop.wait(retry.delay * 2**failures):
                raise Stopped from err
            failures += 1
            continue
        os.replace(part, dest)
        return True


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        return f"{err.reason}"
    return str(err) or type(err).__name__


# --- one segment ----------------------------------------------------------------------------


def _discard(staged: Path, stem: str) -> None:
    for suffix in FETCH_ORDER:
        for path in (local_path(staged, stem, suffix), local_path(staged, stem, suffix + ".part")):
            path.unlink(missing_ok=True)


def download_segment(
    basedir: str, stem: str, out: Path, retry: Retry, stop: threading.Event, counter: ByteCounter
) -> tuple[str, str]:
    """(outcome, why): "downloaded", "missing" (a required file is not on the server) or
    "failed". Files go to `out/.partial/` first and move into `out` together, the video last."""
    staged = out / PARTIAL
    fetched = []
    for suffix in FETCH_ORDER:
        if local_path(out, stem, suffix).is_file():  # moved in by an interrupted run
            continue
        url = file_url(basedir, stem, suffix)
        try:
            found = fetch_file(url, local_path(staged, stem, suffix), retry, stop, counter)
        except DownloadError as err:
            return "failed", str(err)
        if found:
            fetched.append(suffix)
        elif suffix in REQUIRED:
            _discard(staged, stem)
            return "missing", f"{stem}{suffix}: not on the server"
    for suffix in MOVE_ORDER:
        if suffix in fetched:
            final = local_path(out, stem, suffix)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local_path(staged, stem, suffix), final)
    return "downloaded", ""


# --- the run --------------------------------------------------------------------------------


def _prune_empty(root: Path) -> None:
    """Remove the empty folders under `root`, `root` too if it ends up empty."""
    if not root.is_dir():
        return
    folders = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for folder in [*folders, root]:
        with suppress(OSError):
            folder.rmdir()


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _collect(
    futures: dict[Future[tuple[str, str]], str],
    bar: tqdm,
    counter: ByteCounter,
) -> dict[str, tuple[str, str]]:
    results = {}
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        for future in done:
            results[futures[future]] = future.result()
            bar.update()
        bar.set_postfix_str(_megabytes(counter.value), refresh=False)
    return results


def download(
    index: Path, out: Path, limit: int | None = None, jobs: int = 4, retry: Retry | None = None
) -> Summary:
    """Download the first `limit` (all when None) segments of `index` into `out`, `jobs` at
    once; writes `out/missing.txt` (the stems the server lacks) and returns what happened."""
    retry = retry or Retry()
    basedir, stems = read_index(index)
    stems = stems[:limit] if limit is not None else stems
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {s: ("there", "") for s in stems if is_complete(out, s)}
    todo = [s for s in stems if s not in results]
    counter, stop = ByteCounter(), threading.Event()
    bar = tqdm(total=len(stems), initial=len(results), desc="vpt-download", unit="segment")
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="vpt-download")
    try:
        futures = {
            pool.submit(download_segment, basedir, s, out, retry, stop, counter): s for s in todo
        }
        results |= _collect(futures, bar, counter)
    finally:
        stop.set()  # on an error or Ctrl-C, threads stop at their next chunk
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        _prune_empty(out / PARTIAL)
    summary = Summary(nbytes=counter.value)
    for stem in stems:
        outcome, why = results[stem]
        if outcome == "failed":
            summary.failed[stem] = why
        else:
            getattr(summary, outcome).append(stem)
    atomic_write_text(out / "missing.txt", "".join(f"{s}\n" for s in summary.missing))
    return summary


def failure_message(summary: Summary, out: Path, retry: Retry) -> str:
    shown = [f"{stem} ({why})" for stem, why in list(summary.failed.items())[:SHOWN_FAILURES]]
    more = len(summary.failed) - len(shown)
    return (
        f"{len(summary.failed)} segment(s) failed after {retry.retries} retries (their partial "
        f"files stay in {out / PARTIAL}; rerun to resume): " + "; ".join(shown)
        + (f"; and {more} more" if more > 0 else "")
    )  # fmt: skip


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _seconds(positive: bool) -> Any:
    def parse(text: str) -> float:
        value = float(text)
        if not (value > 0 if positive else value >= 0):
            raise argparse.ArgumentTypeError(f"must be {'over' if positive else 'at least'} 0")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument(
        "--index",
        type=Path,
        required=True,
        help="VPT index file: JSON {basedir: URL, relpaths: [...]}, e.g. all_7xx_Apr_6.json",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to download into (OUT/<relpath>.mp4, .jsonl, -options.json)",
    )
    p.add_argument(
        "--max",
        type=_at_least(1),
        default=None,
        metavar="N",
        help="only the first N segments of the index (default: all)",
    )
    p.add_argument(
        "--jobs",
        type=_at_least(1),
        default=4,
        metavar="J",
        help="segments downloaded at once (default 4)",
    )
    p.add_argument(
        "--retries",
        type=_at_least(0),
        default=5,
        help="retries of a file after connection errors, timeouts, cut bodies and HTTP 5xx "
        "(default 5; 404 is never retried, the segment is missing)",
    )
    p.add_argument(
        "--retry-delay",
        type=_seconds(positive=False),
        default=1.0,
        metavar="SECONDS",
        help="back-off before the first retry, doubled for each next one (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds(positive=True),
        default=60.0,
        metavar="SECONDS",
        help="connect and read timeout of every request (default 60)",
    )


def run(args: argparse.Namespace) -> int:
    retry = Retry(retries=args.retries, delay=args.retry_delay, timeout=args.timeout)
    out = Path(args.out)
    summary = download(Path(args.index), out, args.max, args.jobs, retry)
    print(
        f"vpt-download: {len(summary.downloaded)} downloaded ({_megabytes(summary.nbytes)}), "
        f"{len(summary.there)} already there, {len(summary.missing)} missing on the server "
        f"(listed in {out / 'missing.txt'}), {len(summary.failed)} failed → {out}"
    )
    if summary.failed:
        raise StageError(failure_message(summary, out, retry))
    return 0
