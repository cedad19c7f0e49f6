"""Resumable training checkpoints (DeepSpeed's) and the consolidated weights a stage outputs.

Layout of a job's checkpoint folder (one per stage and configuration fingerprint, so a run with
other params or data never resumes from a foreign checkpoint):

    step-00000100/          DeepSpeed model + ZeRO optimizer/scheduler shards of every rank,
      rng-rank<r>.safetensors   each rank's torch / CUDA / numpy / python RNG states
      buffers-rank<r>.safetensors each rank's own persistent buffers (running loss normalisers,
                                counters: DeepSpeed's model file holds rank 0's only)
      ema[-rank<r>].safetensors EMA weights (per shard under ZeRO-3)
      state.json            step, samples, data position, EMA updates
    latest                  name of the newest complete checkpoint (DeepSpeed's own convention)

A checkpoint is written as `step-N.partial/` and renamed once every rank has finished, then
`latest` is replaced atomically: a job killed mid-save leaves the previous checkpoint intact and
the partial folder is removed on the next start. Resume checkpoints hold pickles written by the
job itself (DeepSpeed's format); what a stage hands on — `model.safetensors`,
`model_ema.safetensors` and `config.json` — is read without unpickling anything.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dreamer4.files import atomic_path, atomic_write_text, read_config

WEIGHTS, EMA_WEIGHTS, CONFIG = "model.safetensors", "model_ema.safetensors", "config.json"


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def latest_tag(root: Path) -> str | None:
    """The newest complete checkpoint under `root`, or None."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    return tag if (Path(root) / tag / "state.json").is_file() else None


def latest_step(root: Path) -> int | None:
    tag = latest_tag(root)
    return None if tag is None else read_state(Path(root) / tag)["step"]


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "state.json").read_text())


def remove_partials(root: Path) -> list[Path]:
    """Delete folders of saves that never completed (rank 0, before training starts)."""
    torn = sorted(Path(root).glob("*.partial")) if Path(root).is_dir() else []
    for path in torn:
        shutil.rmtree(path)
    return torn


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors (safetensors, not pickle)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, _ = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_rest": torch.tensor([pos, has_gauss, gauss], dtype=torch.float64),
        "python": torch.tensor(py_state, dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_rest"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss)
    )
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def persistent_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's buffers that are part of its state (running statistics, counters): each
    rank's own, since ranks update them from their own batches."""
    out = {}
    for name, buffer in module.named_buffers():
        owner, _, leaf = name.rpartition(".")
        if leaf not in module.get_submodule(owner)._non_persistent_buffers_set:
            out[name] = buffer
    return out


def copy_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `persistent_buffers` (to undo a forward pass that updated them)."""
    return {k: v.detach().clone() for k, v in persistent_buffers(module).items()}


@torch.no_grad()
def load_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy `saved` (from `persistent_buffers`) into the module's buffers, in place."""
    own = persistent_buffers(module)
    if set(saved) != set(own):
        raise ValueError(
            "checkpointed buffers do not match the model: saved only "
            f"{sorted(set(saved) - set(own))}, model only {sorted(set(own) - set(saved))}"
        )
    for name, value in saved.items():
        own[name].copy_(value)


def seed_micro_step(seed: int, rank: int, index: int) -> None:
    """Seed the global torch (CPU and CUDA), numpy and python RNGs for micro-step `index` of
    `rank`: the random draws of a micro-step (masks, noise, dropout) are then a function of
    (seed, rank, index), like its batch, whatever drew from the global RNG before it (a module
    a job builds on first use, an evaluation, a resume). That is what makes a resumed job
    retrace an uninterrupted one bit for bit."""
    words = np.random.SeedSequence([seed, rank, index]).generate_state(4, np.uint32)
    torch.manual_seed((int(words[0]) << 31) ^ int(words[1]))  # 63 bits
    np.random.seed(words)
    random.seed(int(words[2]) << 32 | int(words[3]))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors, written atomically; tensors copied to CPU and made contiguous and unshared."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, tmp)


def export(
    out: Path, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor], config: dict
) -> None:
    """The stage output: consolidated fp32 weights, EMA weights and the config trained with."""
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(
        out / WEIGHTS, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    )
    save_tensors(out / EMA_WEIGHTS, ema)
    atomic_write_text(
        out / CONFIG, json.dumps(config, indent=2, sort_keys=True, default=str) + "\n"
    )


def load_exported(out: Path, ema: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights (EMA by default) and config of a stage output; no pickle involved."""
    out = Path(out)
    weights = out / (EMA_WEIGHTS if ema else WEIGHTS)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing (run its training stage first)")
    return load_file(weights), read_config(out)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)
