"""Media for the self-contained report: clips and images as ``data:`` URIs (nothing external).

A clip becomes an animated GIF (an ``<img>``: autoplays and loops in every browser, no script)
or an H.264 mp4 (a ``<video autoplay loop muted playsinline>``: much smaller for large frames),
encoded with the project's own writers (:func:`mindvideo.data.video.write_gif`,
:func:`~mindvideo.data.video.write_video`) and inlined as base64.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

import numpy as np

from mindvideo.utils import UserError

__all__ = ["MEDIA", "clip_data_uri", "file_data_uri", "sample_rows"]

MEDIA = ("gif", "mp4")
_MIME = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4", ".jpg": "image/jpeg"}


def data_uri(data: bytes, mime: str) -> str:
    """``data:{mime};base64,...``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def file_data_uri(path: str | os.PathLike) -> str:
    """A file (PNG, GIF, mp4) inlined as a data URI, its type from the extension."""
    path = Path(path)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"no MIME type known for {path.suffix!r}")
    return data_uri(path.read_bytes(), mime)


def clip_data_uri(frames: np.ndarray, fps: float, media: str = "gif") -> tuple[str, str]:
    """``frames: uint8 [F, H, W, 3]`` → ``(data URI, media actually used)``.

    ``media="mp4"`` needs even H and W (H.264 in yuv420p); odd sizes fall back to a GIF.
    """
    from mindvideo.data.video import write_gif, write_video

    if media not in MEDIA:
        raise UserError(f"Unknown report media {media!r}; choose one of {', '.join(MEDIA)}.")
    arr = np.ascontiguousarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise UserError(f"A clip must be uint8 [F, H, W, 3], got {arr.dtype} {list(arr.shape)}.")
    if media == "mp4" and (arr.shape[1] % 2 or arr.shape[2] % 2):
        media = "gif"
    with tempfile.TemporaryDirectory(prefix="mindvideo-report-") as tmp:
        path = Path(tmp) / f"clip.{media}"
        if media == "gif":
            write_gif(path, arr, fps=fps)
        else:
            write_video(path, arr, fps=max(1, round(fps)))
        return file_data_uri(path), media


def sample_rows(n: int, samples: int) -> list[int]:
    """``samples`` row indices evenly spaced over ``n`` windows, first and last included.

    Evenly spaced (not random) so the same run always shows the same windows and the sample
    spans the whole test set.
    """
    if n <= 0 or samples <= 0:
        return []
    if samples >= n:
        return list(range(n))
    return sorted({round(float(x)) for x in np.linspace(0, n - 1, samples)})
