"""`dreamer4 play` as a user meets it: the server on a free loopback port, the page in headless
Chromium, and a load of eight sessions. What a test starts it stops (Ctrl-C, as a user would:
the server must then exit cleanly), also when an assertion fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
import websockets

from tests.conftest import REPO


@contextlib.contextmanager
def serve(cwd: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`dreamer4 play --port 0 …` in `cwd`; yields its URL (read from what it prints)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamer4.cli", "play", "--port", "0", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            output.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 180  # loading torch and the models on a busy machine
        url = None
        while url is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("play did not start:\n" + "".join(output)[-3000:])
                continue
            if line.startswith("play: serving "):
                url = line.split()[2]
        assert url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        yield url, proc
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0, "".join(output)[-3000:]
    finally:
        if proc.poll() is None:  # stuck: the server and its world processes (its group)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def status(url: str) -> dict:
    with urllib.request.urlopen(url + "status", timeout=10) as response:
        return json.loads(response.read())


def test_the_page_plays_every_mode_hands_over_to_the_agent_and_saves_a_game(
    chromium, trained_repo, tmp_path
):
    repo = trained_repo[0]
    inbox = tmp_path / "inbox"
    with serve(repo, "--inbox", str(inbox)) as (url, _):
        page = chromium.new_page()
        page.goto(url)
        page.wait_for_function("document.getElementById('screen').dataset.frames > 2")

        def screen() -> str:
            return page.evaluate("document.getElementById('screen').toDataURL()")

        def frames() -> int:
            return int(page.evaluate("document.getElementById('screen').dataset.frames"))

        for mode in ("game", "dream", "side"):
            page.select_option("#mode", mode)
            page.wait_for_function(f"document.getElementById('screen').dataset.mode === '{mode}'")
            before = screen()
            page.keyboard.down("a")
            page.wait_for_function(
                "document.getElementById('action').textContent.startsWith('move_left (you)')"
            )
            n = frames()
            page.wait_for_function(f"document.getElementById('screen').dataset.frames > {n}")
            page.keyboard.up("a")
            assert screen() != before, mode  # the key press changed #screen
            if mode == "side":  # two frames side by side, and how far they agree
                width, height = page.evaluate("[screen.width, screen.height]")
                assert width > 1.9 * height
                assert float(page.text_content("#psnr")) > 0
                assert page.text_content("#tile").endswith("%")

        page.select_option("#mode", "game")
        page.check("#agent")  # the agent plays on its own
        page.wait_for_function("document.getElementById('action').textContent.endsWith('(agent)')")
        seen = set()
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            seen.add(page.text_content("#action"))
            time.sleep(0.2)
        assert len(seen) >= 2 and all(s.endswith("(agent)") for s in seen)
        assert page.text_content("#value") != "–"  # the phase-3 value head's reading
        page.uncheck("#agent")  # a new recording starts: the person's next steps
        page.keyboard.down("d")
        page.wait_for_function("parseInt(document.getElementById('recorded').textContent) >= 10")
        page.keyboard.up("d")

        page.click("#save")
        page.wait_for_function("document.getElementById('recorded').textContent.includes('saved')")
        page_saved = page.text_content("#recorded")
        assert page.text_content("#status") == ""  # no error event on the way
        page.close()

    saved = page_saved.rsplit("saved ", 1)[1].strip()
    episodes = sorted((inbox / "play").iterdir())
    assert saved in {str(e) for e in episodes}  # the page named what #save wrote
    # the agent's turn cut the game in two (its play is not data); each part is an episode
    recorded = sum(len(next(e.glob("*.jsonl")).read_text().splitlines()) for e in episodes)
    assert recorded > 5
    out = tmp_path / "episodes"
    proc = subprocess.run(
        ["dreamer4", "ingest", "--raw", str(inbox), "--out", str(out)],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(pd.read_parquet(out / "steps.parquet")) == recorded  # every step read
    assert json.loads((out / "dataset.json").read_text())["episodes"] == len(episodes)


async def _load(url: str, seconds: float, proc: subprocess.Popen) -> dict:
    """Seven pages reading every frame and one that never reads, for `seconds`; then a ninth
    page is turned away. The server's status and resident memory are sampled meanwhile."""
    ws_url = url.replace("http", "ws") + "ws"
    counts, first = [0] * 7, [math.inf] * 7
    stop = asyncio.Event()

    async def reader(i: int) -> None:
        async with websockets.connect(ws_url, max_size=2**22) as ws:
            await ws.send(json.dumps({"type": "mode", "mode": ["game", "dream", "side"][i % 3]}))
            await ws.send(json.dumps({"type": "key", "key": "d", "down": True}))
            while not stop.is_set():
                message = json.loads(await ws.recv())
                if message["type"] == "frame":
                    counts[i] += 1
                    first[i] = min(first[i], time.monotonic())

    slow_sock = socket.socket()
    slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow_sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))))
    slow = await websockets.connect(ws_url, sock=slow_sock, max_queue=1, max_size=2**22)
    await slow.send(json.dumps({"type": "mode", "mode": "side"}))  # its largest frames
    tasks = [asyncio.create_task(reader(i)) for i in range(7)]
    memory = psutil.Process(proc.pid)
    samples, answers = [], []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        await asyncio.sleep(1)
        asked = time.monotonic()
        answers.append((await asyncio.to_thread(status, url), time.monotonic() - asked))
        samples.append((time.monotonic() - start, memory.memory_info().rss))
    ended, played = time.monotonic(), list(counts)
    # frames/s of each page from its first frame on: opening (a new world: seconds of CPU on a
    # slow host, 8 at once here) is not the rate a playing page gets
    rates = [(c - 1) / (ended - t) if c > 1 else 0.0 for c, t in zip(played, first, strict=True)]
    async with websockets.connect(ws_url) as ninth:
        refused = json.loads(await ninth.recv())
        await asyncio.wait_for(ninth.wait_closed(), 10)
        code = ninth.close_code
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await slow.close()
    return {"counts": played, "rates": rates, "samples": samples, "answers": answers,
            "refused": refused, "code": code}  # fmt: skip


def test_eight_sessions_for_twenty_seconds_stay_responsive_and_bounded(play_folders, tmp_path):
    folders = [f"--{k.replace('_', '-')}={v}" for k, v in play_folders.items()]
    with serve(REPO, *folders, "--max-sessions", "8", "--inbox", str(tmp_path)) as (url, proc):
        result = asyncio.run(_load(url, 20, proc))
        assert min(result["counts"]) >= 3, result["counts"]  # every page opened and played
        # the pages open first kept playing while the others opened (no page's world stops
        # the others' frames: before worlds moved to worker processes, all got ~1 frame)
        assert max(result["counts"]) >= 20, result["counts"]
        assert min(result["rates"]) >= 1.0, result  # ≥ 1 frame/s each, while others open too
        assert max(seconds for _, seconds in result["answers"]) < 5  # responsive throughout
        assert max(s["sessions"] for s, _ in result["answers"]) == 8
        # the slow page costs frames, not memory
        assert result["answers"][-1][0]["dropped"] > 0, result
        settled = [rss for t, rss in result["samples"] if t >= 8]
        assert max(settled) - settled[0] < 150 * 2**20, result["samples"]
        assert result["refused"]["type"] == "error" and "full" in result["refused"]["message"]
        assert result["code"] == 1013
        deadline = time.monotonic() + 20
        while status(url)["sessions"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status(url)["sessions"] == 0  # every session closed


def test_missing_models_are_named_with_the_stage_that_makes_them(play_folders, tmp_path):
    proc = subprocess.run(
        ["dreamer4", "play", "--tokenizer", str(play_folders["tokenizer"]),
         "--world-model", str(play_folders["world_model"]), "--policy", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{tmp_path / 'none'}/config.json: missing" in proc.stderr
    assert "dvc repro train_policy" in proc.stderr


def test_bad_messages_are_answered_and_a_closed_page_keeps_its_game(play_folders, tmp_path):
    folders = [f"--{k.replace('_', '-')}={v}" for k, v in play_folders.items()]
    inbox = tmp_path / "inbox"

    async def page(url: str) -> tuple[list[str], int]:
        async with websockets.connect(url.replace("http", "ws") + "ws") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send(b"\x00\x01")  # binary
            await ws.send("[" * 5000 + "]" * 5000)  # deeper than the JSON parser goes
            await ws.send(json.dumps({"type": "mode"}))  # a field missing
            await ws.send(json.dumps({"type": "fly"}))  # an unknown request
            await ws.send(json.dumps({"type": "key", "key": "d", "down": True}))
            errors, frames = [], 0
            while len(errors) < 4 or frames < 12:  # the session goes on after each (and plays
                # more than play.min_steps, so that its game is kept)
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["type"] == "error":
                    errors.append(message["message"])
                else:
                    frames += message["type"] == "frame"
            return errors, frames

    with serve(REPO, *folders, "--inbox", str(inbox)) as (url, _):
        errors, _ = asyncio.run(page(url))
        assert "binary" in errors[0] and "missing 'mode'" in errors[2] and "fly" in errors[3]
        deadline = time.monotonic() + 20
        while status(url)["sessions"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status(url)["sessions"] == 0
    (episode,) = list((inbox / "play").iterdir())  # the page closed: its game was saved
    (jsonl,) = episode.glob("*.jsonl")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) >= 6 and lines[-1]["action"] is None
    assert [line["action"] for line in lines[-4:-1]] == ["move_right"] * 3  # the key held
