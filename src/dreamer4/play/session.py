"""One page's play session (`dreamer4 play`): real Crafter, the world model's dream, or both.

Each `tick` takes one action — the agent's when it has the keys, else the person's (a key
pressed since the last tick, else one held down, else noop, as Crafter's own GUI) — and steps
the chosen mode:

- **game**: real Crafter on a world held out from the collection and from evaluation
  (`play.first_seed` …);
- **dream**: the world model (the `world_model` asset) generates the next frame from the action
  (`FrameSampler`: K shortcut steps and one commit pass against its KV cache), decoded frame by
  frame by the tokenizer's decoder against its own cache. Entering it continues from the real
  game's current context: the latents of the last frames and the actions between them;
- **side**: every action goes to both; the view is real | dream with their PSNR and tile
  accuracy, so a person sees where the dream drifts. Entering it restarts the dream from the
  real game, so the two start alike.

The agent (the `policy` asset) reads every frame shown as in evaluation — real frames through
the tokenizer's encoder, dreamed latents directly, as in imagination — so its predicted reward
and value for the frame on the page are shown whoever has the keys; it samples its next action
then, and a person's action replaces that sample as the action it sees next. Leaving the dream
it forgets what it read there (the tokenizer's stream of real frames goes on).

A person's real steps (game and side) are recorded in `collect`'s raw format and saved into
`paths.inbox` by `save()`, at the episode's end, on a new world, when the page closes, when the
agent takes the keys (its own play is not recorded: the data is human play), or when a
recording reaches `record_steps`; written in a hidden folder there and renamed whole when
complete, so the inbox sensor never sees half an episode.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dreamer4.dynamics import Dynamics, load_world_model
from dreamer4.envs.play import PlayedEpisode, inventory_of
from dreamer4.episodes.actions import CRAFTER_ACTIONS
from dreamer4.episodes.crafter_format import write_crafter_episode
from dreamer4.episodes.episode import resize_frame
from dreamer4.errors import StageError
from dreamer4.eval.agent_player import AgentPlayer, model_player
from dreamer4.eval.prompted_play import prompt_indices
from dreamer4.eval.tile_accuracy import tile_accuracy
from dreamer4.nn import KVCache
from dreamer4.play.worlds import WorldMaker, WorldOrder, generate_world
from dreamer4.shortcut import FrameSampler, ShortcutConfig
from dreamer4.tokenizer import Tokenizer, load_tokenizer, psnr

MODES = ("game", "dream", "side")

# Crafter's own GUI keymap (crafter/run_gui.py), by KeyboardEvent.key (letters lowercased).
KEYMAP: dict[str, str] = {
    "w": "move_up",
    "a": "move_left",
    "s": "move_down",
    "d": "move_right",
    " ": "do",
    "Tab": "sleep",
    "r": "place_stone",
    "t": "place_table",
    "f": "place_furnace",
    "p": "place_plant",
    "1": "make_wood_pickaxe",
    "2": "make_stone_pickaxe",
    "3": "make_iron_pickaxe",
    "4": "make_wood_sword",
    "5": "make_stone_sword",
    "6": "make_iron_sword",
}
NOOP = CRAFTER_ACTIONS.index("noop")


class PlayError(ValueError):
    """A request a session cannot follow (unknown mode, key or task): answered, then ignored."""


@dataclass
class PlayModels:
    """What every session shares, loaded once: modules used read-only, without autograd."""

    tokenizer: Tokenizer
    world_model: Dynamics
    shortcut: ShortcutConfig
    steps: int  # shortcut steps K per dreamed frame
    window: int  # past frames the dream keeps: the world model's longest training window − 1
    player: AgentPlayer  # a template: each session plays a shallow copy with caches of its own
    tasks: tuple[str, ...]

    @property
    def resolution(self) -> int:
        return self.tokenizer.cfg.resolution

    @property
    def default_task(self) -> int:
        """The first milestone of the tech tree the agent knows (-1: none)."""
        known = prompt_indices(self.tasks)
        return known[0] if known else -1


def load_models(
    tokenizer_dir: Path, world_model_dir: Path, policy_dir: Path, steps: int = 0
) -> PlayModels:
    """The trained tokenizer, world model and policy (or phase-2 agent) folders; a missing one is
    a `FileNotFoundError` naming its config.json and the stage that writes it. steps: K per
    dreamed frame (0: the world model's `inference_steps`)."""
    tokenizer, _ = load_tokenizer(Path(tokenizer_dir))
    world_model, shortcut, config = load_world_model(Path(world_model_dir))
    sequence = config["model"]["sequence"]
    longest = max(int(sequence["length"]), int(sequence.get("long_length") or 0))
    player, tasks = model_player(Path(policy_dir), tokenizer)
    if player.agent.dynamics.cfg.latents != world_model.cfg.latents:
        raise StageError(f"{policy_dir}: its agent reads other latents than {world_model_dir}")
    k, k_max = int(steps) or shortcut.inference_steps, world_model.cfg.k_max
    if k < 1 or k & (k - 1) or k_max % k:
        raise StageError(f"play.steps = {k}: a power of two dividing k_max = {k_max}")
    for module in (tokenizer, world_model, player.agent):
        module.requires_grad_(False)  # shared by every session's threads, read only
    return PlayModels(
        tokenizer=tokenizer,
        world_model=world_model,
        shortcut=shortcut,
        steps=k,
        window=longest - 1,
        player=player,
        tasks=tuple(tasks),
    )


@dataclass
class Tick:
    """What one tick shows: the view (H, W, 3) uint8 and the page's readouts."""

    image: np.ndarray
    info: dict[str, Any]


class PlaySession:
    """One page's game: `tick()` on the server's clock, `key` and `request` between ticks."""

    def __init__(
        self,
        models: PlayModels,
        inbox: Path,
        first_seed: int = 2_000_000,
        worlds: int = 100_000,
        size: int = 64,
        record_steps: int = 1000,
        seed: int | None = None,
        min_steps: int = 1,
        make_world: WorldMaker = generate_world,
        order_world: WorldOrder | None = None,
    ) -> None:
        """min_steps: shorter recordings are dropped, not saved (ingest would quarantine them
        below its `min_length`). make_world: (seed, size) → (env reset to that world, its first
        observation): in this thread by default, the server's `WorldFactory` in its
        worker processes. order_world: (seed, size) → a future world; given, each reset orders
        the next world (the same seed it would make then), so the next reset takes it ready."""
        self.models, self.inbox, self.size = models, Path(inbox), size
        self.first_seed, self.worlds, self.record_steps = first_seed, worlds, record_steps
        self.min_steps = min_steps
        self.name = uuid.uuid4().hex[:8]
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
        self.player = copy.copy(models.player)
        self.player.generator = self.generator
        self.make_world, self.order_world = make_world, order_world
        self._upcoming: tuple[int, Future[tuple[Any, np.ndarray]]] | None = None
        self.mode, self.agent_on = "game", False
        self.task = models.default_task
        self.pending: deque[int] = deque(maxlen=8)
        self.held: dict[str, int] = {}  # key → action, in the order pressed
        self._keys = threading.Lock()
        self._busy = threading.Lock()  # a tick, or closing
        self._controls: deque[Callable[[], Any]] = deque()
        self.saved: list[Path] = []
        self.errors: list[str] = []  # what went wrong since the last tick (told to the page)
        self.recordings = 0
        self.sampler = FrameSampler(
            models.world_model,
            models.steps,
            models.shortcut,
            generator=self.generator,
            context_window=models.window,
        )
        self.recording = PlayedEpisode()
        self.reset()

    # -- controls -----------------------------------------------------------------------------

    @torch.no_grad()
    def reset(self) -> None:
        """A new held-out world (the game so far saved first); the dream, if shown, restarts."""
        self.save()
        self.world, self.env, self.obs = self._next_world()
        self.counts = dict(self.env._player.achievements)
        self.unlocked: list[str] = []
        self.steps, self.episode_reward = 0, 0.0
        self._new_recording()
        self.player.reset()
        self.history: deque[tuple[Tensor, int]] = deque(maxlen=self.models.window + 1)
        self._encode_real(-1)
        self._read = False  # the agent has not read the frame shown yet
        self.dream_view: np.ndarray | None = None
        if self.mode != "game":
            self._start_dream()

    def _next_world(self) -> tuple[int, Any, np.ndarray]:
        """The next world in the session's order of seeds: the one ordered at the last reset
        if it is ready, else made now (same seed); then the one after it is ordered."""
        seed, order = self._upcoming or (self._draw_seed(), None)
        self._upcoming = None
        if order is not None and order.done() and not order.cancelled() and not order.exception():
            env, obs = order.result()
        else:  # no order, not made yet (a busy machine), failed or cancelled: make it now
            if order is not None:
                order.cancel()  # best effort: one already started is made and dropped
            env, obs = self.make_world(seed, self.size)
        if self.order_world is not None:
            upcoming = self._draw_seed()
            self._upcoming = (upcoming, self.order_world(upcoming, self.size))
        return seed, env, obs

    def _draw_seed(self) -> int:
        return self.first_seed + int(self.rng.integers(self.worlds))

    @torch.no_grad()
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise PlayError(f"mode {mode!r}: one of {', '.join(MODES)}")
        before, self.mode = self.mode, mode
        if before == "dream" and mode != "dream":  # its cache holds the dream: forget it
            self.player.reset_agent()
            self._read = False
        if mode == "side" or (mode == "dream" and before == "game"):
            self._start_dream()  # from the real game's current context

    def set_agent(self, on: bool) -> None:
        """Hand the keys to the agent (the person's game so far is saved: its play is not
        recorded) or back (a new recording starts at this frame)."""
        on = bool(on)
        if on and not self.agent_on:
            self.save()
        elif self.agent_on and not on:
            self._new_recording()
        self.agent_on = on

    def set_task(self, task: str) -> None:
        self.task = self._task_index(task)

    def _task_index(self, task: Any) -> int:
        if task in ("", "none"):
            return -1
        if task in self.models.tasks:
            return self.models.tasks.index(task)
        raise PlayError(f"task {task!r}: not one of the agent's ({', '.join(self.models.tasks)})")

    def request(self, kind: str, value: Any = None) -> None:
        """A control from the page (`mode`, `agent`, `task`, `reset`, `save`): checked now,
        applied at the start of the next tick, so nothing changes under a tick running in a
        worker thread."""
        if kind == "mode":
            if value not in MODES:
                raise PlayError(f"mode {value!r}: one of {', '.join(MODES)}")
            self._controls.append(lambda: self.set_mode(value))
        elif kind == "agent":
            self._controls.append(lambda: self.set_agent(bool(value)))
        elif kind == "task":
            index = self._task_index(value)
            self._controls.append(lambda: setattr(self, "task", index))
        elif kind == "reset":
            self._controls.append(self.reset)
        elif kind == "save":
            self._controls.append(self.save)
        else:
            raise PlayError(f"unknown request {kind!r}")

    def key(self, key: str, down: bool) -> None:
        """A key event from the page (KeyboardEvent.key); letters count in either case."""
        name = key if key in KEYMAP else str(key).lower()
        if name not in KEYMAP:
            raise PlayError(f"key {key!r}: not in Crafter's keymap")
        action = CRAFTER_ACTIONS.index(KEYMAP[name])
        with self._keys:  # events arrive on the server's loop, ticks run in a worker thread
            if down:
                self.pending.append(action)
                self.held.pop(name, None)
                self.held[name] = action
            else:
                self.held.pop(name, None)

    def save(self, done: bool = False) -> Path | None:
        """Save the person's real game recorded so far (if `min_steps` or more) into the inbox
        and go on recording from this frame; a failed write is told to the page, the
        recording kept. done: the episode ended at this frame."""
        if len(self.recording.lines) < self.min_steps:
            if self.recording.lines:
                self._new_recording()  # too short to be data
            return None
        episode = PlayedEpisode(
            frames=list(self.recording.frames), lines=list(self.recording.lines)
        )
        episode.finish(self.obs, inventory_of(self.env), done=done)
        return self._write(episode)

    # -- the clock ------------------------------------------------------------------------------

    def close(self) -> None:
        """The page went away: save what the person played (after a tick in flight)."""
        with self._busy:
            self.save()
            if self._upcoming is not None:  # best effort: an order not started is not made
                self._upcoming[1].cancel()
                self._upcoming = None

    def tick(self) -> Tick:
        """Apply the controls requested since the last tick, then one step of the chosen mode
        with the chosen action; the agent then reads the frame shown."""
        with self._busy:
            return self._tick()

    @torch.no_grad()
    def _tick(self) -> Tick:
        while self._controls:
            try:
                self._controls.popleft()()
            except PlayError as err:
                self.errors.append(str(err))
        if not self._read:
            self._agent_reads()
        pressed = self._key_action()
        action = self.sampled if self.agent_on else pressed
        self.player.took({"crafter": torch.tensor([action])})
        ended = False
        if self.mode in ("game", "side"):
            ended = self._real_step(action)
        if self.mode in ("dream", "side") and not ended:
            self._dream_step(action)
        self._agent_reads()
        tick = Tick(self._view(), self._info(action))
        self.errors = []
        return tick

    # -- steps -----------------------------------------------------------------------------------

    def _agent_reads(self) -> None:
        """The agent's pass over the frame shown: its readouts and its next action's sample."""
        z = self.z_dream if self.mode == "dream" else self.z_real
        self.sampled = int(self.player.act_latents(z, torch.tensor([self.task]))["crafter"][0])
        self.heads = {k: float(v[0]) for k, v in self.player.predictions().items()}
        self._read = True

    def _key_action(self) -> int:
        with self._keys:
            if self.agent_on:  # keys pressed while the agent plays are not saved for later
                self.pending.clear()
                return NOOP
            if self.pending:
                return self.pending.popleft()
            if self.held:
                return next(reversed(self.held.values()))
            return NOOP

    def _real_step(self, action: int) -> bool:
        """Step real Crafter (recording a person's step); True when the episode ended (saved,
        then a new world)."""
        inventory = inventory_of(self.env)
        frame = self.obs
        self.obs, reward, done, info = self.env.step(action)
        unlocked = sorted(k for k, v in info["achievements"].items() if v > self.counts.get(k, 0))
        self.counts = dict(info["achievements"])
        self.unlocked += [u for u in unlocked if u not in self.unlocked]
        self.steps += 1
        self.episode_reward += float(reward)
        if not self.agent_on:
            self.recording.add_step(frame, inventory, action, reward, unlocked)
        self._encode_real(action)
        if done:
            self.save(done=True)
            self.reset()
            return True
        if len(self.recording.lines) >= self.record_steps:
            self.save()
        return False

    def _dream_step(self, action: int) -> None:
        self.z_dream = self.sampler.next({"crafter": torch.tensor([[action]])})
        self.dream_view = self._decode(self.z_dream)

    def _encode_real(self, action_in: int) -> None:
        """The latents of the real frame just shown, and the history the dream starts from."""
        # the frame as the agent sees it (and side by side shows it), resized once
        self.seen = np.ascontiguousarray(resize_frame(self.obs, self.models.resolution))
        self.z_real = self.player.encode(torch.from_numpy(self.seen)[None])
        self.history.append((self.z_real, action_in))

    @torch.no_grad()
    def _start_dream(self) -> None:
        """The dream from the real game's context: its latents and the actions between them;
        the decoder's cache warmed on the frames before the last that it was trained to see."""
        context = torch.cat([z for z, _ in self.history], 1)
        actions = torch.tensor([[a for _, a in self.history]])
        actions[:, 0] = -1  # nothing known leads into the first frame of the context
        self.sampler.start(context, {"crafter": actions})
        tok = self.models.tokenizer
        self.decoder_cache = KVCache.empty(tok.decoder.cfg)
        past = context[:, -tok.cfg.sequence : -1]
        for t in range(past.shape[1]):  # frame by frame, as `Tokenizer.decode_stream`
            tok.decode(past[:, t : t + 1], cache=self.decoder_cache)
            self.decoder_cache.crop(tok.cfg.sequence - 1)
        self.z_dream = context[:, -1:]
        self.dream_view = self._decode(self.z_dream)

    def _decode(self, z: Tensor) -> np.ndarray:
        tok = self.models.tokenizer
        patches = tok.decode(z, cache=self.decoder_cache)
        self.decoder_cache.crop(tok.cfg.sequence - 1)
        pixels = tok.unpatchify(patches)[0, 0].clamp(-1, 1)
        return ((pixels + 1) * 127.5).round().to(torch.uint8).numpy()

    # -- what the page gets -----------------------------------------------------------------

    def _view(self) -> np.ndarray:
        if self.mode == "game":
            return self.obs
        if self.mode == "dream":
            return self.dream_view
        gap = np.full((self.seen.shape[0], 1, 3), 255, np.uint8)
        return np.concatenate([self.seen, gap, self.dream_view], 1)

    def _info(self, action: int) -> dict[str, Any]:
        heads = self.heads
        info: dict[str, Any] = {
            "type": "frame",
            "mode": self.mode,
            "agent": self.agent_on,
            "task": self.models.tasks[self.task] if self.task >= 0 else "none",
            "action": CRAFTER_ACTIONS[action],
            "by": "agent" if self.agent_on else "you",
            "reward": round(heads["reward"], 4),
            "value": round(heads["value"], 4) if "value" in heads else None,
            "world": self.world,
            "step": self.steps,
            "return": round(self.episode_reward, 2),
            "achievements": self.unlocked,
            "recorded": len(self.recording.lines),
            "saved": [str(p) for p in self.saved[-3:]],
            "errors": list(self.errors),
        }
        if self.mode == "side":
            dream = torch.from_numpy(self.dream_view).float() / 127.5 - 1
            truth = torch.from_numpy(self.seen).float() / 127.5 - 1
            info["psnr"] = round(float(psnr(dream, truth)), 2)
            shown = torch.from_numpy(self.obs.copy())[None]
            tiles = float(tile_accuracy(dream[None], shown, self.size))
            info["tile_accuracy"] = None if math.isnan(tiles) else round(tiles, 3)  # too dark
        return info

    # -- recordings ------------------------------------------------------------------------------

    def _new_recording(self) -> None:
        self.recording = PlayedEpisode()
        self.recording_world, self.recording_start = self.world, self.steps

    def _write(self, episode: PlayedEpisode) -> Path | None:
        """Write a finished recording into the inbox (a hidden folder renamed whole) and start
        a new one at this frame; None, the error kept for the page, if the write failed."""
        self.recordings += 1
        name = f"play-{time.strftime('%Y%m%d-%H%M%S')}-{self.name}-{self.recordings:03d}"
        options = {
            "id": name,
            "world_seed": self.recording_world,
            "first_step": self.recording_start,
            "size": self.size,
            "env": "crafter",
            "crafter_version": "1.8.3",
            "player": "human",
            "fps": 20,
            "source": "dreamer4 play",
        }
        folder = self.inbox / "play"
        tmp = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
            write_crafter_episode(tmp, name, np.stack(episode.frames), episode.lines, options)
            os.replace(tmp, folder / name)
        except OSError as err:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            self.errors.append(f"could not save the game into {folder}: {err}")
            return None
        self.saved.append(folder / name)
        self._new_recording()
        return folder / name
