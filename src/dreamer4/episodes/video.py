"""Lossless episode video in .mp4 with PyAV.

Crafter frames are stored bit-exact: `libx264rgb` with `crf 0` in RGB24 (no chroma subsampling,
no YUV rounding). `preset=ultrafast` encodes about 14k frames/s at 64×64. Browsers cannot play
this form; report videos need a separate yuv420p encode.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from dreamer4.episodes.episode import EpisodeError, resize_frame
from dreamer4.files import atomic_path


class VideoError(EpisodeError):
    """A video file is missing, corrupt or truncated; the message names the file."""


def write_video(path: Path, frames: np.ndarray, fps: int = 20) -> None:
    """Write (T, H, W, 3) uint8 frames losslessly; atomic (temporary file, then rename)."""
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.shape}")
    path = Path(path)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24"
        # One thread: x264's output is then independent of the machine's core count.
        stream.options = {"crf": "0", "preset": "ultrafast", "threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def iter_video(path: Path) -> Iterator[np.ndarray]:
    """Decode frames as (H, W, 3) uint8 RGB; raises `VideoError` naming the file on corruption."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError(f"{path}: unreadable video ({err})") from err


def read_video(
    path: Path, size: int | None = None, expected: int | None = None, labels: str = "labels"
) -> np.ndarray:
    """All frames as (T, H, W, 3) uint8, resized to `size`×`size` (None keeps them).

    With `expected`, a frame count that differs (a truncated or mismatched recording) raises
    `EpisodeError` naming the video and the `labels` file it was checked against.
    """
    frames = [resize_frame(f, size) for f in iter_video(path)]
    if not frames:
        raise VideoError(f"{path}: video holds no frames")
    if expected is not None and len(frames) != expected:
        raise EpisodeError(f"{path}: {len(frames)} frames but {labels} has {expected} lines")
    return np.stack(frames)
