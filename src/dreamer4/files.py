"""Atomic file output: readers never see a half-written file, and no temp file survives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def swap_in_folder(tmp: Path, out: Path, marker: str, kind: str) -> None:
    """Replace `out` by the finished folder `tmp` (same parent): an existing `out` must hold
    `marker`, so a stage never deletes a folder it did not write."""
    import shutil

    if out.exists():
        if not (out / marker).is_file():
            raise StageError(f"{out}: exists and is not {kind}; not replacing it")
        shutil.rmtree(out)
    os.replace(tmp, out)
