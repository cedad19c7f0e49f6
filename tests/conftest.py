"""Shared fixtures: small raw episodes of every kind, written by the real writers and recorders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Subprocesses (dvc, dreamer4, dagster) must find this venv's commands.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")


# Tests that use these are slow whatever they do: the trained pipeline, a browser.
SLOW_FIXTURES = ("trained_repo", "chromium")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that uses a `SLOW_FIXTURES` fixture, so `-m "not slow"` stays a
    quick loop however a new test reaches them (directly or through another fixture)."""
    for item in items:
        if set(SLOW_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test: tiny models on a shared 2-core machine run many
    times faster than on two (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stage_lines(output: str) -> list[str]:
    """The lines our code printed, without DeepSpeed's notices about JIT-building its ops (it
    prints them first, whenever a process finds the op missing from the extension cache)."""
    return [line for line in output.splitlines() if not line.startswith("DeepSpeed ")]


def write_npz_episode(directory: Path, seed: int, length: int, skill: float = 0.0) -> list[int]:
    """One episode recorded by Crafter's own `crafter.Recorder`; returns the actions taken."""
    import crafter

    from dreamer4.envs.crafter_env import make_env
    from dreamer4.envs.scripted_player import ScriptedPlayer

    env = crafter.Recorder(
        make_env(seed, length=length),
        directory,
        save_stats=True,
        save_video=False,
        save_episode=True,
    )
    env.reset()
    player = ScriptedPlayer(skill, seed=seed)
    player.reset()
    actions, done = [], False
    while not done:
        actions.append(int(player.act(env)))
        _, _, done, _ = env.step(actions[-1])
    return actions


def vpt_frames(n: int, seed: int, h: int = 36, w: int = 64) -> np.ndarray:
    """Frames with structure (gradients + noise) standing in for 360×640 Minecraft video."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, w, dtype=np.float64)[None, :, None] + np.zeros((h, 1, 3))
    return np.stack([(base + rng.integers(0, 50, (h, w, 3))).astype(np.uint8) for _ in range(n)])


def crafter_lines(
    actions: list[int], rewards: list[float] | None = None, unlocked: dict[int, str] | None = None
) -> list[dict]:
    """JSON lines of our Crafter format for these actions, plus the terminal frame's line."""
    from dreamer4.episodes.actions import CRAFTER_ACTIONS

    rewards = rewards or [0.0] * len(actions)
    unlocked = unlocked or {}
    lines = [
        {
            "step": t,
            "action": CRAFTER_ACTIONS[a],
            "reward": rewards[t],
            "done": False,
            "achievements": [unlocked[t]] if t in unlocked else [],
            "inventory": {"wood": t},
        }
        for t, a in enumerate(actions)
    ]
    end = {"step": len(actions), "action": None, "reward": 0.0, "done": True, "achievements": []}
    return [*lines, {**end, "inventory": {}}]


@pytest.fixture
def tmp_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    return raw


REPO = Path(__file__).resolve().parent.parent


def full_profile(name: str = "tiny") -> dict:
    """A profile of the repository's params.yaml merged over its defaults: every key present,
    so a test can change any of them and write it out as a profile of its own."""
    from dreamer4.params import load_profile

    profile = load_profile(REPO / "params.yaml", name)
    del profile["paths"], profile["profile"]
    return profile


def write_params(path: Path, overlay: dict, paths: dict | None = None) -> Path:
    """A params file of the repository's defaults and one profile `p`: `overlay`, with an empty
    block for every stage it leaves alone."""
    import yaml

    from dreamer4.params import STAGE_SECTIONS

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    profile = {name: {} for name in STAGE_SECTIONS} | overlay
    params.update(profile="p", paths=paths or {}, profiles={"p": profile})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def small_models(tiny: dict) -> dict:
    """The `tiny` profile's models and evaluations shrunk to test size, in place (widths 16, two
    layers, 4-frame windows, 2 evaluation sequences); how long each stage trains stays the
    caller's. Returns `tiny`."""
    tokenizer = tiny["train_tokenizer"]
    tokenizer["model"].update(width=16, depth=2, decoder_depth=2, heads=2, latents=4, bottleneck=4)
    tokenizer["eval_sequences"] = 2
    dynamics = tiny["train_dynamics"]
    dynamics["model"].update(width=16, depth=2, heads=2, time_every=2, registers=1, k_max=8)
    dynamics["sequence"].update(length=4, long_length=8, long_every=2)
    dynamics["rollout"].update(sequences=2, context=4, horizon=2)
    agent = tiny["finetune_agent"]
    agent["agent"].update(mtp=2, bins=41)
    agent["sequence"].update(length=4)
    agent["eval_sequences"] = 2
    return tiny


def make_dvc_repo(root: Path, episodes: int = 3, max_steps: int = 60) -> Path:
    """A git + DVC repository with this project's dvc.yaml, code and a shrunk `tiny` profile."""
    import shutil
    import subprocess

    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for folder in ("src", "infra", "inbox"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = params["profiles"]["tiny"] = full_profile("tiny")
    tiny["collect"].update(episodes=episodes, max_steps=max_steps, workers=2)
    # Training stages: a few steps of a small model, still 2 ranks through torchrun, no fixed port.
    tiny["train"].update(metrics_port=None)
    small_models(tiny)
    four = {"steps": 4, "micro_batch": 2, "checkpoint_every": 2}
    tiny["train_tokenizer"]["train"].update(eval_every=0, **four)
    tiny["train_dynamics"]["train"].update(**four)
    agent = tiny["finetune_agent"]
    # agent stages in one process (the engine's 2-rank path is exercised by the stages above)
    one_rank = {"launcher": "none", "nproc": 1}
    agent["train"].update(steps=4, micro_batch=4, checkpoint_every=2, **one_rank)
    policy = tiny["train_policy"]
    policy["imagination"].update(horizon=2, context=2, context_window=3, steps=2, value_warmup=1)
    policy["train"].update(steps=2, micro_batch=2, checkpoint_every=2, **one_rank)
    tiny["imagine"].update(contexts=2, batch=2)
    # in-process (the worker pool is exercised by tests/stages/test_evaluate.py)
    tiny["evaluate"].update(episodes=2, max_steps=10, workers=1, clip_steps=8)
    params["profiles"]["alt"] = yaml.safe_load(yaml.safe_dump(tiny))
    params["profiles"]["alt"]["collect"]["seed"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/data/\n/models/\n/checkpoints/\n")

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)

    sh("git", "init", "-q")
    sh("git", "config", "user.email", "test@localhost")
    sh("git", "config", "user.name", "test")
    sh("dvc", "init", "-q")
    sh("dvc", "config", "core.analytics", "false")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "init")
    return root


# What a trained repository is made from: a change to any of these trains a new one.
TRAINED_FROM = ("src", "infra", "inbox", "dvc.yaml", ".dvcignore", "params.yaml", "pyproject.toml",
                "constraints.txt", "constraints-dvc.txt", "Makefile",
                "tests/conftest.py")  # fmt: skip


def trained_inputs_digest() -> str:
    """sha256 over the path and bytes of every file a trained repository is made from."""
    import hashlib

    digest = hashlib.sha256()
    for name in TRAINED_FROM:
        top = REPO / name
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            if "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(REPO)}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:20]


@pytest.fixture(scope="session")
def trained_repo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A `make_dvc_repo` after one `dvc repro` of every stage, and that run's output.

    One per session: training the whole pipeline is the suite's most expensive step. Tests that
    change the repository leave it reproduced (`dvc status` clean), so they pass in any order and
    alone; a test that needs another state (a profile switch) works on a copy.

    Outside CI the trained repository is also kept in pytest's cache under the digest of
    everything it is made from (`TRAINED_FROM`), so running one test alone after a full run
    copies it instead of training again; any change to code, params or pins trains anew.
    `pytest -p no:cacheprovider` or `--cache-clear` always trains.
    """
    import shutil
    import subprocess

    import dreamer4

    root = tmp_path_factory.mktemp("trained") / "repo"
    cache = getattr(request.config, "cache", None)
    kept = None
    # the stages run the editable install: only a digest of that code names what they ran
    ours = Path(dreamer4.__file__).is_relative_to(REPO / "src")
    if cache is not None and ours and not os.environ.get("CI"):
        kept = cache.mkdir("trained_repo") / trained_inputs_digest()
        if (kept / "output.txt").is_file():
            shutil.copytree(kept / "repo", root, symlinks=True)
            return root, (kept / "output.txt").read_text()
    make_dvc_repo(root)
    # bounded, with room for a shared 2-core machine (alone it takes 3–5 minutes)
    proc = subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    # kept only if no source changed while it was copied and trained from
    if kept is not None and trained_inputs_digest() == kept.name:
        keep_trained(root, output, kept)
    return root, output


def keep_trained(root: Path, output: str, kept: Path) -> None:
    """Copy a trained repository into the cache as `kept`: written aside under a name of its
    own, then renamed (another session keeping the same digest first wins); older digests go."""
    import shutil
    import tempfile

    aside = Path(tempfile.mkdtemp(prefix=".partial-", dir=kept.parent))
    shutil.copytree(root, aside / "repo", symlinks=True)
    (aside / "output.txt").write_text(output)
    try:
        aside.rename(kept)
    except OSError:
        shutil.rmtree(aside, ignore_errors=True)
        return
    for old in kept.parent.iterdir():
        if old != kept and not old.name.startswith(".partial-"):
            shutil.rmtree(old, ignore_errors=True)


def make_episode_dataset(
    out: Path,
    episodes: int = 6,
    length: int = 48,
    resolution: int = 16,
    seed: int = 0,
    events: dict[str, tuple[int, ...]] | None = None,
) -> Path:
    """A small episode dataset written by the real DatasetWriter: a square drifting over a
    gradient (learnable structure), random Crafter actions, every third episode unlabelled.
    events: name → steps at which it happens, in every episode (the `task` column follows)."""
    import pandas as pd

    from dreamer4.episodes.dataset import DatasetWriter, write_json
    from dreamer4.episodes.episode import Episode

    rng = np.random.default_rng(seed)
    writer = DatasetWriter(out, chunk_frames=4 * length)
    yy, xx = np.mgrid[:resolution, :resolution]
    for e in range(episodes):
        pos = rng.integers(0, resolution - 4, 2).astype(float)
        vel = rng.normal(0, 0.7, 2)
        frames = []
        for _ in range(length):
            pos = np.clip(pos + vel, 0, resolution - 4)
            img = np.stack(
                [xx * 255 // resolution, yy * 255 // resolution, np.full_like(xx, 40 * (e % 6))], -1
            ).astype(np.uint8)
            y, x = pos.astype(int)
            img[y : y + 4, x : x + 4] = (250, 250, 30)
            frames.append(img)
        labelled = np.full(length, e % 3 != 2)
        writer.add(
            Episode(
                id=f"ep{e:03d}",
                source="crafter",
                frames=np.stack(frames),
                actions={"crafter": rng.integers(0, 17, length)},
                labelled=labelled,
                reward=rng.random(length).astype(np.float32),
                records=length,
                events={
                    name: np.isin(np.arange(length), steps)
                    for name, steps in (events or {}).items()
                },
            ),
            "eval" if e == episodes - 1 else "train",
        )
    steps, table = writer.close()
    steps.to_parquet(out / "steps.parquet", index=False)
    pd.DataFrame(table).to_parquet(out / "episodes.parquet", index=False)
    write_json(
        out / "dataset.json", {"resolution": resolution, "episodes": episodes, "steps": len(steps)}
    )
    return out


@pytest.fixture(scope="session")
def episode_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_episode_dataset(tmp_path_factory.mktemp("dataset") / "episodes")


@pytest.fixture
def chromium():
    """A headless Debian Chromium driven by playwright (never a browser download); skipped
    with a message where it is missing, a failure in CI (`.ci/run` installs it)."""
    import shutil

    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("no /usr/bin/chromium: `make browser` (apt-get install chromium) to run this")
    from playwright.sync_api import sync_playwright

    # closed networking: no background requests, no sandbox as root, no GPU
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=flags, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()
