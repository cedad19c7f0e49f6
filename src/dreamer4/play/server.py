"""`dreamer4 play`: play real Crafter or inside the world model from a web page.

An ASGI app (starlette, served by uvicorn) on http://127.0.0.1:8765/ by default: `GET /` is the
page (`page.html`, one file, no build step, nothing fetched from elsewhere), `GET /status` a
JSON summary, and `/ws` one WebSocket per page, each with its own `PlaySession`.

Messages are JSON text. From the page: `{"type": "key", "key": "w", "down": true}`,
`{"type": "mode", "mode": "game" | "dream" | "side"}`, `{"type": "agent", "on": true}`,
`{"type": "task", "task": "collect_wood"}`, `{"type": "reset"}`, `{"type": "save"}`. To the
page: `hello` (modes, tasks, keymap, tick rate), `frame` (a PNG data URL and the readouts of
`PlaySession.tick`), `error` (a message; the request is ignored, the session goes on).

Bounded: at most `max_sessions` sessions (one more gets an `error` saying so and a close with
code 1013, "try again later"); each session ticks on a fixed clock in a worker thread, so the
event loop stays free for other pages, and sends through a queue of `send_queue` frames that
drops the oldest when a page reads slowly, so a slow client costs frames, not memory. A new
world (a page opening, or its reset) is made in worker processes (`play/worlds.py`), so a page
that opens does not stop the others' frames; each session's next world is made ahead at low
priority, so a reset does not wait for one. A closed socket frees its session; Ctrl-C stops
the server, the sessions with it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from dreamer4.eval.tile_accuracy import classifier
from dreamer4.files import read_config
from dreamer4.params import Settings
from dreamer4.play.session import KEYMAP, MODES, PlayError, PlayModels, PlaySession, load_models
from dreamer4.play.worlds import WorldFactory
from dreamer4.train.checkpoint import CONFIG

PAGE = Path(__file__).with_name("page.html")
SEND_BUFFER = 32 * 1024  # bytes of kernel send buffer per socket: a few frames (enough for
# 10 frames/s of ≤ 12 KB at any round trip under 100 ms)


@dataclass
class PlayConfig:
    """The `play` section of params.yaml (see there), after command-line overrides."""

    inbox: Path
    fps: float = 10.0
    first_seed: int = 2_000_000
    worlds: int = 100_000
    size: int = 64
    max_sessions: int = 4
    send_queue: int = 2
    record_steps: int = 1000
    min_steps: int = 8


@dataclass
class Counters:
    sessions: int = 0
    opened: int = 0
    frames: int = 0
    dropped: int = 0
    started: float = field(default_factory=time.monotonic)


def create_app(models: PlayModels, cfg: PlayConfig, threads: int = 0) -> Starlette:
    """The ASGI app over loaded models (tests serve it on a free loopback port). threads: the
    cores the ticks may use (0: all), shared among the worker threads."""
    counters = Counters()
    # Ticks are CPU-bound: one worker thread per core serves any number of sessions as fast as
    # more would, and bounds the per-thread memory (allocator arenas, torch's buffers). Torch's
    # thread count (the process's) follows the open sessions: every core for one page, one
    # each when there are as many pages as cores, so ticks never oversubscribe the cores.
    cores = threads or os.cpu_count() or 1
    workers = max(1, min(cfg.max_sessions, cores))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="play")
    # A new world (a page opening, or its reset) is made in worker processes (play/worlds.py),
    # and sessions open and close on their own threads, never in the tick pool: a page that
    # opens costs the others a core for a moment, not their frames. Each session's next world
    # is made ahead, at the lowest CPU priority, so a reset does not wait for one.
    worlds = WorldFactory(workers)
    starter = ThreadPoolExecutor(max_workers=cfg.max_sessions, thread_name_prefix="play-start")
    classifier(cfg.size)  # the tile classifier of side by side, built once before any page
    page = PAGE.read_text()

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "sessions": counters.sessions,
                "max_sessions": cfg.max_sessions,
                "opened": counters.opened,
                "frames": counters.frames,
                "dropped": counters.dropped,
                "workers": workers,
                "uptime_s": round(time.monotonic() - counters.started, 1),
            }
        )

    async def play(ws: WebSocket) -> None:
        await ws.accept()
        if counters.sessions >= cfg.max_sessions:
            await _send(ws, error=f"server full: {cfg.max_sessions} sessions in use; try later")
            await ws.close(code=1013)
            return
        counters.sessions += 1
        counters.opened += 1
        loop = asyncio.get_running_loop()
        session: PlaySession | None = None
        tasks: list[asyncio.Task] = []
        try:
            try:
                session = await loop.run_in_executor(starter, _new_session, models, cfg, worlds)
            except Exception as err:
                await _fail(ws, "could not start", err)
                return
            await ws.send_text(json.dumps(_hello(models, cfg)))
            queue: asyncio.Queue[str] = asyncio.Queue(maxsize=cfg.send_queue)
            tasks = [
                asyncio.create_task(_receive(ws, session)),
                asyncio.create_task(_clock(session, queue, pool, cfg.fps, counters, cores)),
                asyncio.create_task(_sender(ws, queue)),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            failed = [t.exception() for t in done if not t.cancelled() and t.exception()]
            crash = [e for e in failed if not isinstance(e, WebSocketDisconnect | OSError)]
            if crash:
                await _fail(ws, "failed", crash[0])
        except WebSocketDisconnect:
            pass
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(BaseException):
                    await task
            if session is not None:  # keep what the person played
                with suppress(Exception):
                    await loop.run_in_executor(starter, session.close)
            counters.sessions -= 1

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        pool.shutdown(wait=True, cancel_futures=True)
        starter.shutdown(wait=True, cancel_futures=True)
        worlds.close()

    return Starlette(
        routes=[Route("/", index), Route("/status", status), WebSocketRoute("/ws", play)],
        lifespan=lifespan,
    )


def _new_session(models: PlayModels, cfg: PlayConfig, worlds: WorldFactory) -> PlaySession:
    return PlaySession(
        models,
        cfg.inbox,
        first_seed=cfg.first_seed,
        worlds=cfg.worlds,
        size=cfg.size,
        record_steps=cfg.record_steps,
        min_steps=cfg.min_steps,
        make_world=worlds,
        order_world=worlds.later,
    )


def _hello(models: PlayModels, cfg: PlayConfig) -> dict[str, Any]:
    return {
        "type": "hello",
        "modes": list(MODES),
        "tasks": list(models.tasks),
        "keymap": KEYMAP,
        "fps": cfg.fps,
        "steps": models.steps,
        "task": models.tasks[models.default_task] if models.default_task >= 0 else "none",
        "value": models.player.value is not None,
    }


async def _send(ws: WebSocket, error: str) -> None:
    await ws.send_text(json.dumps({"type": "error", "message": error}))


async def _fail(ws: WebSocket, what: str, err: BaseException) -> None:
    """A bug: tell the page, close (1011), keep the traceback in the server's log."""
    traceback.print_exception(err)
    with suppress(Exception):
        await _send(ws, error=f"the session {what}: {err!r}")
        await ws.close(code=1011)


async def _receive(ws: WebSocket, session: PlaySession) -> None:
    """Apply the page's messages until it closes; a bad one is answered and ignored."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        try:
            if text is None:
                raise PlayError("binary messages are not understood: send JSON text")
            request = json.loads(text)
            if not isinstance(request, dict) or not isinstance(request.get("type"), str):
                raise PlayError("a message is a JSON object with a string `type`")
            kind = request["type"]
            if kind == "key":
                session.key(str(request["key"]), bool(request.get("down", True)))
            else:
                value = {"mode": "mode", "agent": "on", "task": "task"}.get(kind)
                session.request(kind, request[value] if value else None)
        except KeyError as err:
            await _send(ws, error=f"ignored {str(text)[:80]!r}: missing {err}")
        except (ValueError, TypeError, RecursionError) as err:  # PlayError, bad JSON, …
            await _send(ws, error=f"ignored {str(text)[:80]!r}: {err}")


async def _clock(
    session: PlaySession,
    queue: asyncio.Queue[str],
    pool: ThreadPoolExecutor,
    fps: float,
    counters: Counters,
    cores: int,
) -> None:
    """Tick at `fps` (or as fast as the models allow), each frame into the bounded queue."""
    loop = asyncio.get_running_loop()
    period, due = 1.0 / fps, time.monotonic()
    while True:
        threads = max(1, cores // max(1, counters.sessions))
        text = await loop.run_in_executor(pool, frame_message, session, threads)
        if queue.full():  # the page reads slower than we tick: drop the oldest frame
            queue.get_nowait()
            counters.dropped += 1
        queue.put_nowait(text)
        counters.frames += 1
        due = max(due + period, time.monotonic())
        await asyncio.sleep(due - time.monotonic())


def frame_message(session: PlaySession, threads: int = 0) -> str:
    """One tick, as the JSON the page reads (in a worker thread: torch and PNG release the
    GIL); threads: torch threads of this worker for it (0: as they are)."""
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    tick = session.tick()
    buffer = io.BytesIO()
    Image.fromarray(tick.image).save(buffer, format="PNG", compress_level=1)
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return json.dumps({**tick.info, "image": image})


async def _sender(ws: WebSocket, queue: asyncio.Queue[str]) -> None:
    while True:
        await ws.send_text(await queue.get())


# -- command line ------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to bind (default play.host: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, help="port (default play.port: 8765; 0 = any free one)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: paths.tokenizer)")
    p.add_argument("--world-model", type=Path, help="world model folder (paths.world_model)")
    p.add_argument("--policy", type=Path, help="policy or phase-2 agent folder (paths.policy)")
    p.add_argument("--inbox", type=Path, help="where saved games go (default: paths.inbox)")
    p.add_argument("--fps", type=float, help="ticks per second (default play.fps)")
    p.add_argument("--steps", type=int, help="shortcut steps K per dreamed frame (play.steps)")
    p.add_argument("--max-sessions", type=int, help="concurrent pages (play.max_sessions)")


def run(args: argparse.Namespace) -> int:
    settings = Settings.load(args, "play")
    own = settings.own
    threads = own.count("threads", low=0)
    paths = {
        "tokenizer": settings.path("tokenizer", args.tokenizer),
        "world_model": settings.path("world_model", args.world_model),
        "policy": settings.path("policy", args.policy),
    }
    for name, folder in paths.items():  # before loading anything: name every missing one
        flag = name.replace("_", "-")
        read_config(folder, CONFIG, f"`dvc repro {_STAGE[name]}` or pass --{flag} DIR")
    models = load_models(
        paths["tokenizer"], paths["world_model"], paths["policy"], own.count("steps", args.steps, 0)
    )
    cfg = PlayConfig(
        inbox=settings.path("inbox", args.inbox),
        fps=float(own.check("fps", lambda v: 0 < float(v) <= 60, "must be in (0, 60]", args.fps)),
        first_seed=own.count("first_seed", low=0),
        worlds=own.count("worlds"),
        size=own.count("size"),
        max_sessions=own.count("max_sessions", args.max_sessions),
        send_queue=own.count("send_queue"),
        record_steps=own.count("record_steps"),
        min_steps=own.count("min_steps"),
    )
    host = str(args.host or own["host"])
    port = own.count("port", args.port, low=0)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # A fixed send buffer (inherited by every accepted socket) instead of the kernel's
    # autotuning up to megabytes: a page that stops reading holds back a few frames, then the
    # bounded queue drops them.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    sock.bind((host, port))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    shown = f"[{host}]" if ":" in host else host
    print(f"play: serving http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C stops)", flush=True)
    config = uvicorn.Config(
        create_app(models, cfg, threads), log_level="warning", ws="websockets-sansio",
        timeout_graceful_shutdown=5, lifespan="on",
    )  # fmt: skip
    try:  # uvicorn closes the sockets and the sessions, then re-raises the Ctrl-C it caught
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    print("play: stopped", flush=True)
    return 0


_STAGE = {"tokenizer": "train_tokenizer", "world_model": "train_dynamics", "policy": "train_policy"}
