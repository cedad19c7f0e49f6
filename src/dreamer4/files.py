"""Stage files: atomic output (readers never see a half-written file or folder, and no temp
file survives) and the JSON files stages hand on."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dreamer4.errors import StageError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path`; on success rename it onto `path`.

    Hidden (leading dot), so `find_raw_episodes` never mistakes it for an episode.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes (a training job's upstream weights belong to its identity)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def swap_in_folder(tmp: Path, out: Path, marker: str, kind: str) -> None:
    """Replace `out` by the finished folder `tmp` (same parent): an existing `out` must hold
    `marker` or be empty, so a stage never deletes a folder it did not write."""
    if out.exists():
        if not (out / marker).is_file() and any(out.iterdir()):
            raise StageError(f"{out}: exists and is not {kind}; not replacing it")
        shutil.rmtree(out)
    os.replace(tmp, out)


@contextmanager
def staged_folder(out: Path, marker: str, kind: str) -> Iterator[Path]:
    """A fresh folder beside `out` to write into; on success it replaces `out` whole
    (`swap_in_folder`: an existing `out` must hold `marker` or be empty), on failure it is
    removed and `out` stays as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        swap_in_folder(tmp, out, marker, kind)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_config(
    folder: Path, name: str = "config.json", producer: str = "its stage"
) -> dict[str, Any]:
    """The JSON file `name` of a stage output (a model's config.json, a dataset's
    dataset.json, ...); missing, it is an error naming the file and the stage that writes it."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run {producer} first)")
    return json.loads(path.read_text())
