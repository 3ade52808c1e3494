"""Video I/O: H.264 mp4 with PyAV (its wheel bundles FFmpeg), animated GIF with Pillow.

Used by ``simulate`` (writing the stimuli), ``prepare`` (paper 4.1: frames at 3 FPS, 256 x 256
center crops, TR t paired with the 6 frames shown during [2t, 2t + 2) s) and ``reconstruct``
(mp4 + gif output).

Frames are uint8 RGB arrays: one frame ``[H, W, 3]``, a clip ``[T, H, W, 3]``. Writers accept a
clip or an iterable of clips (chunks), so an 8-minute video is streamed, never held whole.

A file that cannot be decoded to its end (truncated, corrupt) raises one :class:`UserError`
naming the file, including the case where decoding stops before the duration the container
header claims: a silently shorter stimulus would misalign every later TR with its frames.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mindvideo.utils import UserError, atomic_path

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

__all__ = [
    "VideoInfo",
    "area_frames",
    "iter_video_frames",
    "read_video",
    "video_info",
    "write_gif",
    "write_video",
]

# Frames with at most this many pixels are encoded single-threaded: x264's threads cost more
# than they gain on tiny frames (measured: 32 x 32 runs ~3x faster with one thread).
_SINGLE_THREAD_PIXELS = 128 * 128
# Encoder threads for larger frames, the same on every machine (x264's output depends on it).
_ENCODER_THREADS = 4
# Tolerance when comparing frame times, in seconds (frame times are rationals turned to floats).
_EPS = 1e-6


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video's first video stream."""

    fps: float
    n_frames: int
    width: int
    height: int
    duration_s: float


def area_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 frames ``[..., H, W, 3]`` → float32 ``[..., size, size, 3]`` in ``[0, 1]``, each
    pixel the mean of its ``H/size × W/size`` block (``H`` and ``W`` multiples of ``size``)."""
    f = np.asarray(frames)
    *lead, h, w, c = f.shape
    if h % size or w % size:
        raise UserError(
            f"Frames of {h}×{w} pixels do not divide into {size}×{size} blocks, so they cannot "
            f"be area-averaged to {size}×{size}; choose a size that divides {h} and {w}."
        )
    blocks = f.reshape(*lead, size, h // size, size, w // size, c).astype(np.float32)
    return blocks.mean(axis=(-4, -2)) / 255.0


def _sws_flags(interpolation: str = "BILINEAR") -> int:
    """swscale flags for decoding YUV to RGB: ``interpolation`` plus exact rounding and full
    chroma interpolation, which cut a write/read round trip's colour error threefold (flat
    colours: 1.3 → 0.4 grey levels on average)."""
    from av.video.reformatter import Interpolation

    flags = Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP
    return int(Interpolation[interpolation] | flags)


def _iter_chunks(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield non-empty ``[T, H, W, 3]`` chunks from a clip or an iterable of clips or frames."""
    if isinstance(frames, np.ndarray):
        frames = [frames]
    for chunk in frames:
        chunk = np.asarray(chunk)
        if chunk.ndim == 3:
            chunk = chunk[None]
        if chunk.ndim != 4 or chunk.shape[-1] != 3:
            raise UserError(
                f"Video frames must be uint8 arrays [T, H, W, 3] or [H, W, 3], not shape "
                f"{tuple(chunk.shape)}; convert them to RGB first."
            )
        if chunk.dtype != np.uint8:
            raise UserError(
                f"Video frames must have dtype uint8, not {chunk.dtype}; scale them to 0..255 "
                "and cast with .astype(np.uint8)."
            )
        if len(chunk):
            yield chunk


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: int,
    crf: int = 18,
) -> Path:
    """Write frames to an H.264 mp4 (libx264, yuv420p), atomically; return the path.

    frames: ``[T, H, W, 3]`` uint8, or an iterable of such chunks (streamed). H and W must be
    even (yuv420p halves the chroma resolution). ``crf`` is x264's constant rate factor
    (0 = lossless, 18 = visually lossless, 23 = x264's default).
    """
    import av

    path = Path(path)
    if fps <= 0:
        raise UserError(f"Cannot write {path}: fps must be positive, not {fps}.")
    chunks = _iter_chunks(frames)
    first = next(chunks, None)
    if first is None:
        raise UserError(f"Cannot write {path}: no frames were given.")
    _, height, width, _ = first.shape
    if height % 2 or width % 2:
        raise UserError(
            f"Cannot write {path}: H.264 (yuv420p) needs an even width and height, got "
            f"{width} x {height}; crop or pad the frames by one pixel."
        )
    n = 0
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(
            "libx264",
            rate=Fraction(fps).limit_denominator(1001),
            # cpu-independent: x264's CPU-specific macroblock-tree code makes the stream differ
            # between runs now and then (measured); without it the same frames give the same
            # bytes, on any machine.
            options={"crf": str(crf), "preset": "veryfast", "x264-params": "cpu-independent=1"},
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # A fixed thread count: x264's output depends on it, and "auto" follows the machine.
        single = width * height <= _SINGLE_THREAD_PIXELS
        stream.codec_context.thread_count = 1 if single else _ENCODER_THREADS
        for chunk in itertools.chain([first], chunks):
            if chunk.shape[1:3] != (height, width):
                raise UserError(
                    f"Cannot write {path}: frame size changed from {width} x {height} to "
                    f"{chunk.shape[2]} x {chunk.shape[1]} at frame {n}; resize all frames to "
                    "one size."
                )
            for frame in chunk:
                # The encoder converts RGB to yuv420p with one persistent swscale context.
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            n += len(chunk)
        container.mux(stream.encode(None))
    log.debug("wrote %s (%d frames at %d FPS)", path, n, fps)
    return path


def _open_input(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open ``path`` and return (container, first video stream), or raise a UserError."""
    import av

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Video file {path} does not exist; check the path.")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise UserError(
            f"Cannot open video {path} ({e.__class__.__name__}: {_ffmpeg_message(e)}); the file "
            "is truncated, corrupt or not a video: re-create or re-download it."
        ) from e
    if not container.streams.video:
        container.close()
        raise UserError(f"File {path} has no video stream; give a video file (mp4).")
    return container, container.streams.video[0]


def _ffmpeg_message(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _frame_rate(stream: av.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _count_packets(path: Path, stream_index: int) -> int:
    """Count a stream's packets by demuxing (no decoding), for containers without a count."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams[stream_index]
        return sum(1 for p in container.demux(stream) if p.size > 0)


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame rate, frame count, size and duration of ``path``'s first video stream."""
    import av

    path = Path(path)
    container, stream = _open_input(path)
    with container:
        fps = _frame_rate(stream)
        n_frames = int(stream.frames)
        width, height = stream.codec_context.width, stream.codec_context.height
        duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        index = stream.index
    if n_frames <= 0:
        try:
            n_frames = _count_packets(path, index)
        except av.error.FFmpegError as e:
            raise UserError(
                f"Cannot read video {path} ({_ffmpeg_message(e)}); the file is truncated or "
                "corrupt: re-create or re-download it."
            ) from e
    if fps > 0:
        duration = n_frames / fps
    return VideoInfo(fps=fps, n_frames=n_frames, width=width, height=height, duration_s=duration)


def _timed_frames(path: Path, start_s: float = 0.0) -> Iterator[tuple[float, float, av.VideoFrame]]:
    """Decode ``path``; yield (onset_s, frame_duration_s, frame) from about ``start_s`` on.

    Onsets are relative to the stream's start. Raises a UserError naming the file if decoding
    fails or ends before the duration the container claims (a truncated file).
    """
    import av

    container, stream = _open_input(path)
    with container:
        rate = _frame_rate(stream)
        frame_dur = 1.0 / rate if rate > 0 else 0.0
        tb = stream.time_base
        origin = float(stream.start_time * tb) if stream.start_time is not None and tb else None
        claimed = 0.0
        if stream.frames and rate > 0:
            claimed = stream.frames / rate
        elif stream.duration and tb:
            claimed = float(stream.duration * tb)
        seeked = False
        if start_s > 0 and tb:
            # Seek to the keyframe at or before start_s; decoding then runs forward to it.
            offset = math.floor(start_s / tb) + (stream.start_time or 0)
            try:
                container.seek(offset, stream=stream, backward=True, any_frame=False)
                seeked = True
            except av.error.FFmpegError:
                container.seek(0)  # unseekable: decode from the start instead
        stream.thread_type = "AUTO"
        last_end = 0.0
        index = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and tb:
                    t = float(frame.pts * tb)
                    if origin is None:
                        origin = t
                    t -= origin
                elif not seeked:
                    t = index * frame_dur
                else:
                    raise UserError(
                        f"Cannot seek in video {path}: its frames carry no timestamps; read it "
                        "from the start (start_s=0)."
                    )
                index += 1
                last_end = t + frame_dur
                yield t, frame_dur, frame
        except av.error.FFmpegError as e:
            raise UserError(
                f"Cannot decode video {path} after {last_end:.2f} s ({_ffmpeg_message(e)}); the "
                "file is truncated or corrupt: re-create or re-download it."
            ) from e
        if claimed > 0 and last_end < claimed - 0.5 * frame_dur:
            raise UserError(
                f"Video {path} ends after {last_end:.2f} s of the {claimed:.2f} s its header "
                "claims; the file is truncated or corrupt: re-create or re-download it."
            )


def _to_array(
    frame: av.VideoFrame, reformatter: av.video.reformatter.VideoReformatter, size: int | None
) -> np.ndarray:
    """Frame → ``[H, W, 3]`` uint8 RGB; with ``size``: short side → size, center crop square."""
    if size is None:
        return reformatter.reformat(frame, format="rgb24", interpolation=_sws_flags()).to_ndarray()
    width, height = frame.width, frame.height
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    # AREA averages the source pixels under each output pixel (antialiased downscaling).
    flags = _sws_flags("AREA" if scale < 1 else "BICUBIC")
    rgb = reformatter.reformat(
        frame, width=new_w, height=new_h, format="rgb24", interpolation=flags
    ).to_ndarray()
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return rgb[top : top + size, left : left + size]


def _resize_short_side(
    frame: av.VideoFrame, reformatter: av.video.reformatter.VideoReformatter, short_side: int
) -> np.ndarray:
    """Frame → ``[H', W', 3]`` uint8 RGB with its shorter side resized to ``short_side``."""
    scale = short_side / min(frame.width, frame.height)
    width = max(1, round(frame.width * scale))
    height = max(1, round(frame.height * scale))
    flags = _sws_flags("AREA" if scale < 1 else "BICUBIC")
    return reformatter.reformat(
        frame, width=width, height=height, format="rgb24", interpolation=flags
    ).to_ndarray()


def _select_frames(
    path: Path, fps: float | None, start_s: float, duration_s: float | None
) -> Iterator[av.VideoFrame]:
    """The frames ``read_video`` returns, before conversion to arrays.

    Without ``fps``: every frame whose onset lies in [start_s, start_s + duration_s). With
    ``fps``: for each output time t_k = start_s + k / fps in that window (and before the end of
    the video), the frame on screen at t_k, i.e. the last frame with onset <= t_k.
    """
    end_s = math.inf if duration_s is None else start_s + duration_s
    if fps is None:
        for t, _, frame in _timed_frames(path, start_s):
            if t >= end_s - _EPS:
                return
            if t >= start_s - _EPS:
                yield frame
        return
    k = 0
    prev: av.VideoFrame | None = None
    prev_end = 0.0
    for t, frame_dur, frame in _timed_frames(path, start_s):
        if prev is not None:
            # ``prev`` is on screen until this frame's onset t.
            while True:
                t_k = start_s + k / fps
                if t_k >= end_s - _EPS:
                    return
                if t_k >= t - _EPS:
                    break
                yield prev
                k += 1
        prev, prev_end = frame, t + frame_dur
    if prev is not None:
        # The last frame stays on screen for one frame duration.
        while (t_k := start_s + k / fps) < min(end_s, prev_end) - _EPS:
            yield prev
            k += 1


def read_video(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | None = None,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """Decode ``path`` to ``[T, H, W, 3]`` uint8 RGB (paper 4.1: 3 FPS, 256 x 256).

    fps: resample by taking, for each output time k / fps, the frame on screen at that time
    (30 → 3 FPS takes frames 0, 10, 20, ...). size: resize the short side to ``size``
    (antialiased area averaging when shrinking, bicubic when enlarging) and center-crop to
    ``size x size``. start_s, duration_s: the window of the video to read.
    Raises a UserError naming the file if it is missing, unreadable or truncated.
    """
    path = Path(path)
    if fps is not None and fps <= 0:
        raise UserError(f"Cannot read {path}: fps must be positive, not {fps}.")
    if size is not None and size <= 0:
        raise UserError(f"Cannot read {path}: size must be positive, not {size}.")
    if start_s < 0 or (duration_s is not None and duration_s < 0):
        raise UserError(
            f"Cannot read {path}: start_s and duration_s must be non-negative, not "
            f"{start_s} and {duration_s}."
        )
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    selected = _select_frames(path, fps, start_s, duration_s)
    frames = [_to_array(f, reformatter, size) for f in selected]
    if not frames:
        info = video_info(path)
        height, width = (size, size) if size is not None else (info.height, info.width)
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(frames)


def iter_video_frames(
    path: str | os.PathLike, short_side: int | None = None
) -> Iterator[np.ndarray]:
    """Stream-decode ``path``: yield each frame as ``[H, W, 3]`` uint8 RGB.

    short_side: if given, resize each frame (keeping its aspect ratio, antialiased) so that its
    shorter side has this many pixels. Raises a UserError naming the file if it is missing,
    unreadable or truncated (the error comes at the frame where decoding stops).
    """
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    for _, _, frame in _timed_frames(Path(path)):
        if short_side is None:
            yield _to_array(frame, reformatter, None)
        else:
            yield _resize_short_side(frame, reformatter, short_side)


def write_gif(
    path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: float
) -> Path:
    """Write frames as an animated GIF that loops forever, atomically; return the path.

    frames: ``[T, H, W, 3]`` uint8 or an iterable of such chunks. GIF stores frame durations
    in hundredths of a second, so the played rate is ``fps`` rounded to that grid.
    """
    from PIL import Image

    path = Path(path)
    if fps <= 0:
        raise UserError(f"Cannot write {path}: fps must be positive, not {fps}.")
    images = [Image.fromarray(f) for chunk in _iter_chunks(frames) for f in chunk]
    if not images:
        raise UserError(f"Cannot write {path}: no frames were given.")
    duration_ms = max(10, round(1000 / fps / 10) * 10)
    with atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=duration_ms,
            loop=0,
            disposal=1,
        )
    return path
