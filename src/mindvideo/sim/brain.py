"""The simulated brain: a voxel-wise encoding model from video to BOLD, plus noise.

Stage 0 of the pipeline (ours, not the paper's): it gives the simulated Wen 2018 dataset a
known ground truth. Per subject, each grayordinate has a *role* decided by its Glasser area
(:mod:`mindvideo.data.atlas`) and, if it is *responsive*, a stimulus-driven signal:

- ``early`` (V1–V4): luminance, red–green, blue–yellow and local contrast inside a Gaussian
  receptive field (RF), with a per-voxel channel preference. RF centres are retinotopic: the
  position of the vertex within its area on the fsLR sphere maps to eccentricity (first
  principal axis) and polar angle (second), each hemisphere seeing the opposite hemifield;
  RF size grows with eccentricity and along the hierarchy V1 < V2 < V3 < V4.
- ``motion`` (MT+ complex, dorsal areas): motion energy (absolute frame differences) inside a
  large RF, plus direction-tuned energy (normal flow along a preferred direction).
- ``class`` (ventral / lateral occipito-temporal areas): the class of the scene on screen,
  through a random tuning value per voxel and class.

Features are computed from the rendered frames chunk by chunk (:class:`FeatureExtractor`) on a
``FEATURE_GRID`` x ``FEATURE_GRID`` grid at ``FEATURE_HZ`` — never from a whole 30 FPS video in
memory. The neural drive is convolved with a per-voxel double-gamma HRF (peak time varying by
voxel and subject) and averaged over each TR. Noise (:func:`noise`): spontaneous fluctuations
shared within Yeo-17 networks and Glasser areas, AR(1) noise and white noise (unit variance in
all), plus a slow polynomial drift. The stimulus-driven part of a run depends only on the video
and the subject, so repetitions of a segment share it exactly while their noise differs.

Signal units: one unit is 1% BOLD signal change around a baseline near 10,000 (the scale of
HCP minimally preprocessed data); SNR = std of the stimulus-driven signal / std of the noise
(drift excluded: the authors' detrending removes it).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import numpy as np

from mindvideo.data import atlas
from mindvideo.utils.threads import blas_controller

__all__ = [
    "FEATURE_GRID",
    "FEATURE_HZ",
    "ROLES",
    "FeatureExtractor",
    "NoiseModel",
    "StimulusFeatures",
    "SubjectBrain",
    "calibrate_gain",
    "compose_run",
    "double_gamma_hrf",
    "make_noise_model",
    "make_subject_brain",
    "noise",
    "related_tuning",
    "single_thread_blas",
    "stimulus_bold",
]

FEATURE_HZ = 10.0
"""Rate of the stimulus features and the neural signal (frames are averaged into bins)."""
FEATURE_GRID = 16
"""Features are computed on a FEATURE_GRID x FEATURE_GRID grid of image blocks."""
HRF_LENGTH_S = 40.0
"""Support of the HRF kernel (the undershoot of a 7 s-peak HRF has decayed by then)."""
RESPONSIVE_FRACTION = 0.8
"""Probability that a voxel of a visual area responds to the stimulus (config field wanted:
``SimulateConfig.responsive_fraction``)."""
BASELINE = 10000.0
"""Mean BOLD intensity (HCP's intensity normalisation); data = baseline * (1 + 1% * signal)."""
DRIFT_STD = 1.0
"""Std (noise units) of each Legendre drift coefficient (orders 1..3) of a run."""

ROLES: tuple[str, ...] = ("none", "early", "motion", "class")
"""Voxel roles; ``SubjectBrain.role`` holds indices into this tuple."""

_AREA_ROLE = (
    {a: 1 for a in atlas.EARLY_VISUAL_AREAS}
    | {a: 2 for a in atlas.MOTION_AREAS}
    | {a: 3 for a in atlas.HIGHER_VISUAL_AREAS}
)
# RF size (std, in screen half-widths) at the fovea per early area; grows with eccentricity.
_RF_SIZE = {"V1": 0.05, "V2": 0.08, "V3": 0.12, "V4": 0.2}
# Channel std of the normalised features, measured on simulated segments, so that each
# channel enters the voxel's drive with comparable weight.
_IMAGE_SCALE = np.array([0.17, 0.17, 0.16, 0.04], np.float32)  # L, RG, BY, contrast
_MOTION_SCALE = np.array([0.018, 0.0015, 0.0015], np.float32)  # |dI/dt|, x / y normal flow


# --------------------------------------------------------------------------------------------
# stimulus features


@dataclass(frozen=True)
class StimulusFeatures:
    """What was on screen, at ``rate_hz`` on the run clock (sample k covers [k, k+1) / rate).

    image: ``[S, P, 4]`` float32, P = grid², channels luminance, red–green, blue–yellow,
    contrast (each divided by its typical std). motion: ``[S, P, 3]`` float32, motion energy
    and x / y direction energy. classes: ``[S, C]`` float32, the fraction of the sample's
    frames that showed each class (all zero on a blank screen). blank_image: ``[P, 4]``, the
    image features of the blank (mid-grey) screen.
    """

    image: np.ndarray
    motion: np.ndarray
    classes: np.ndarray
    blank_image: np.ndarray
    rate_hz: float
    grid: int

    @property
    def n_samples(self) -> int:
        return self.image.shape[0]


def _block_averager(n: int, grid: int) -> np.ndarray:
    """``[grid, n]`` matrix averaging n pixels into grid blocks (unequal blocks if needed)."""
    edges = (np.arange(grid + 1) * n) // grid
    a = np.zeros((grid, n), np.float32)
    for i in range(grid):
        a[i, edges[i] : edges[i + 1]] = 1.0 / (edges[i + 1] - edges[i])
    return a


def single_thread_blas() -> contextlib.AbstractContextManager:
    """A context limiting BLAS to one thread. Feature extraction is many small matrix
    products, which run several times slower multi-threaded (worse on a loaded machine)."""
    controller = blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def _block_mean(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``rows @ x[t] @ cols`` for each t: ``[T, H, K]`` → ``[T, g, k]``, as two plain 2-D GEMMs
    (numpy's stacked matmul can be ~100x slower for some shapes)."""
    t, h, k = x.shape
    y = (x.reshape(t * h, k) @ cols).reshape(t, h, -1)
    z = rows @ np.ascontiguousarray(y.transpose(1, 0, 2)).reshape(h, -1)
    return np.ascontiguousarray(z.reshape(len(rows), t, -1).transpose(1, 0, 2))


class FeatureExtractor:
    """Streams frames (scene by scene) into :class:`StimulusFeatures` at ``rate_hz``.

    Call :meth:`add` with consecutive chunks (``[T, H, W, 3]`` uint8 and the class shown, or
    ``None`` for a blank screen), then :meth:`result`. Only per-sample sums are kept. Run it
    inside :func:`single_thread_blas`: its many small matrix products are faster that way.
    """

    def __init__(
        self,
        fps: float,
        n_classes: int,
        grid: int = FEATURE_GRID,
        rate_hz: float = FEATURE_HZ,
    ) -> None:
        self.fps = float(fps)
        self.rate_hz = float(min(rate_hz, fps))
        self.n_classes = n_classes
        self.grid = grid
        self._frames = 0
        self._prev: tuple[np.ndarray, np.ndarray] | None = None  # (full-res lum, grid lum)
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._size: tuple[int, ...] | None = None

    def _averagers(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows [g, H], columns [W, g], RGB columns [W*3, g*3]) block-averaging matrices."""
        g = self.grid
        ay = _block_averager(h, g)
        ax = np.ascontiguousarray(_block_averager(w, g).T)
        ax3 = np.kron(ax, np.eye(3, dtype=np.float32))  # keeps the channels apart
        return ay, ax, ax3

    def _features(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image [T, P, 4], motion [T, P, 3]) of consecutive frames ``[T, H, W, 3]``.

        Block averages are matrix products (much faster than numpy reductions over small axes).
        """
        g = self.grid
        t, h, w, _ = frames.shape
        ay, ax, ax3 = self._averagers(h, w)
        rgb = frames.astype(np.float32) * np.float32(1 / 255)
        colour = _block_mean(rgb.reshape(t, h, w * 3), ay, ax3).reshape(t, g, g, 3)
        lum = (rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) * np.float32(1 / 3)  # [T, H, W]
        lum_g = _block_mean(lum, ay, ax)  # [T, g, g]
        # Local contrast: the std of luminance within each block.
        contrast = np.sqrt(np.maximum(_block_mean(lum * lum, ay, ax) - lum_g**2, 0))
        r, gr, b = colour[..., 0], colour[..., 1], colour[..., 2]
        image = np.stack([lum_g - 0.5, r - gr, b - 0.5 * (r + gr), contrast], axis=-1)
        # Motion against the previous frame (the last frame of the previous chunk).
        prev_full, prev_g = self._prev if self._prev is not None else (lum[:1], lum_g[:1])
        diff = np.empty_like(lum)
        diff[0] = lum[0] - prev_full[0]
        np.subtract(lum[1:], lum[:-1], out=diff[1:])
        energy = _block_mean(np.abs(diff), ay, ax)
        g_seq = np.concatenate([prev_g, lum_g], axis=0)
        dt = np.diff(g_seq, axis=0)
        mid = 0.5 * (g_seq[1:] + g_seq[:-1])
        dy, dx = np.gradient(mid, axis=(1, 2))
        # Normal flow numerator -I_t * grad(I): its sign says which way an edge moved.
        motion = np.stack([energy, -dt * dx, dt * dy], axis=-1)  # y points up on screen
        self._prev = (lum[-1:], lum_g[-1:])
        image = image.reshape(t, g * g, 4) / _IMAGE_SCALE
        motion = motion.reshape(t, g * g, 3) / _MOTION_SCALE
        return image.astype(np.float32), motion.astype(np.float32)

    def add(self, frames: np.ndarray, class_id: int | None) -> None:
        """Add consecutive frames ``[T, H, W, 3]`` uint8 showing ``class_id`` (None: blank)."""
        frames = np.asarray(frames)
        if len(frames) == 0:
            return
        if self._size is None:
            self._size = frames.shape[1:3]
        image, motion = self._features(frames)
        index = self._frames + np.arange(len(frames))
        sample = np.floor(index * self.rate_hz / self.fps + 1e-9).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]])
        counts = np.diff(np.r_[starts, len(frames)])
        classes = np.zeros((len(starts), self.n_classes), np.float32)
        if class_id is not None:
            classes[:, class_id] = counts
        self._chunks.append(
            (
                sample[starts],
                np.add.reduceat(image, starts, axis=0),
                np.add.reduceat(motion, starts, axis=0),
                classes,
                counts.astype(np.float32),
            )
        )
        self._frames += len(frames)

    def add_blank(self, duration_s: float, size: tuple[int, int] | None = None) -> None:
        """Add ``duration_s`` of a mid-grey screen (before or after the movie).

        size: (height, width) of the screen; defaults to that of the frames added so far.
        """
        if size is not None:
            self._size = self._size or tuple(size)
        if self._size is None:
            raise ValueError("give the screen size for a blank before any frame")
        n = round(duration_s * self.fps)
        h, w = self._size
        step = 256  # bounded memory for long blanks
        for start in range(0, n, step):
            self.add(np.full((min(step, n - start), h, w, 3), 128, np.uint8), None)

    def blank_image(self) -> np.ndarray:
        """Image features ``[P, 4]`` of the mid-grey screen."""
        h, w = self._size or (self.grid, self.grid)
        saved = self._prev
        image, _ = self._features(np.full((1, h, w, 3), 128, np.uint8))
        self._prev = saved
        return image[0]

    def result(self) -> StimulusFeatures:
        """The features of everything added so far, one row per sample."""
        if not self._chunks:
            raise RuntimeError("no frames were added")
        n = int(self._chunks[-1][0][-1]) + 1
        p = self.grid * self.grid
        image = np.zeros((n, p, 4), np.float32)
        motion = np.zeros((n, p, 3), np.float32)
        classes = np.zeros((n, self.n_classes), np.float32)
        counts = np.zeros(n, np.float32)
        for sample, im, mo, cl, co in self._chunks:
            # A sample split across two chunks appears twice; += on unique indices per chunk.
            image[sample] += im
            motion[sample] += mo
            classes[sample] += cl
            counts[sample] += co
        counts = np.maximum(counts, 1)
        return StimulusFeatures(
            image=image / counts[:, None, None],
            motion=motion / counts[:, None, None],
            classes=classes / counts[:, None],
            blank_image=self.blank_image(),
            rate_hz=self.rate_hz,
            grid=self.grid,
        )


# --------------------------------------------------------------------------------------------
# the subject's brain


@dataclass(frozen=True)
class NoiseModel:
    """Per-voxel noise parameters (all ``[G]``, file order).

    network: Yeo-17 network id (0 = none); area: Glasser label id (0 = none); network_share /
    area_share: fraction of the noise variance from the network's / area's spontaneous
    fluctuation; ar_phi: AR(1) coefficient per TR of the remaining noise; white_share: the white
    part of the remaining noise; baseline: mean intensity.
    """

    network: np.ndarray
    area: np.ndarray
    network_share: np.ndarray
    area_share: np.ndarray
    ar_phi: np.ndarray
    white_share: np.ndarray
    baseline: np.ndarray


@dataclass(frozen=True)
class SubjectBrain:
    """One simulated subject: roles, responsiveness, HRFs, encoding weights and noise.

    Per grayordinate (``[G]``, file order): role (index into :data:`ROLES`), responsive,
    hrf_peak_s, rf_x / rf_y / rf_size (screen half-widths, x right, y up; NaN where the voxel
    has no RF). The responsive voxels, in the column order of the stimulus signal, are
    ``columns = concat(early, motion, klass)`` (positions into G): image_weights
    ``[P*4, len(early)]``, motion_weights ``[P*3, len(motion)]``, class_tuning
    ``[C, len(klass)]``, hrf ``[L, len(columns)]`` (at ``rate_hz``).
    """

    grayordinates: np.ndarray
    role: np.ndarray
    responsive: np.ndarray
    hrf_peak_s: np.ndarray
    rf_x: np.ndarray
    rf_y: np.ndarray
    rf_size: np.ndarray
    early: np.ndarray
    motion: np.ndarray
    klass: np.ndarray
    image_weights: np.ndarray
    motion_weights: np.ndarray
    class_tuning: np.ndarray
    rate_hz: float
    noise: NoiseModel

    @property
    def columns(self) -> np.ndarray:
        """Positions (into G) of the responsive voxels, in stimulus-signal column order."""
        return np.concatenate([self.early, self.motion, self.klass])

    @property
    def hrf(self) -> np.ndarray:
        """HRF kernels ``[L, n_responsive]`` at ``rate_hz``, one per responsive voxel."""
        return double_gamma_hrf(self.hrf_peak_s[self.columns], self.rate_hz)


def related_tuning(
    reference: SubjectBrain, n_grayordinates: int, rng: np.random.Generator
) -> np.ndarray:
    """The class-tuning map ``[C, G]`` other subjects share with ``reference``: its own tuning
    at its class voxels, a fresh N(0, 1) draw at every other vertex. With ``similarity`` s in
    :func:`make_subject_brain`, a class voxel's tuning correlates with the reference's at the
    same vertex by s, and with another such subject's by s²."""
    tuning = rng.normal(0, 1, (reference.class_tuning.shape[0], n_grayordinates))
    tuning[:, reference.klass] = reference.class_tuning
    return tuning.astype(np.float32)


def double_gamma_hrf(peak_s: np.ndarray, rate_hz: float, length_s: float = HRF_LENGTH_S):
    """Double-gamma HRFs ``[L, N]`` sampled at ``rate_hz``, each summing to 1.

    SPM's canonical shape (response gamma of shape 6, undershoot of shape 16 at 1/6 of its
    height) with the time scale set so that the response peaks at ``peak_s`` ``[N]``.
    """
    peak_s = np.atleast_1d(np.asarray(peak_s, np.float64))
    t = (np.arange(round(length_s * rate_hz)) + 0.5)[:, None] / rate_hz
    scale = peak_s[None, :] / 5.0  # the mode of gamma(6, scale) is 5 * scale

    def gamma_pdf(shape: float) -> np.ndarray:
        log_pdf = (shape - 1) * np.log(t / scale) - t / scale - math.lgamma(shape)
        return np.exp(log_pdf) / scale

    h = gamma_pdf(6.0) - gamma_pdf(16.0) / 6.0
    return (h / h.sum(axis=0, keepdims=True)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _retinotopy(area: str, hemisphere: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grayordinates, u, v) of one early area: ranks in [0, 1] of each vertex along the two
    principal axes of the area on the fsLR sphere (u → eccentricity, v → polar angle).

    The axes are oriented like the real maps: u grows anteriorly (the fovea sits at the
    occipital pole), v grows dorsally (dorsal cortex sees the lower visual field).
    """
    idx = np.flatnonzero(atlas.area_mask([area], hemisphere))
    xyz = atlas.grayordinate_coordinates(idx, "sphere")
    xyz = xyz - xyz.mean(axis=0)
    _, _, vt = np.linalg.svd(xyz, full_matrices=False)
    proj = xyz @ vt[:2].T
    for k, axis in ((0, 1), (1, 2)):  # sphere axes: y anterior, z superior
        if np.dot(proj[:, k], xyz[:, axis]) < 0:
            proj[:, k] *= -1
    ranks = np.argsort(np.argsort(proj, axis=0), axis=0) / max(len(idx) - 1, 1)
    return idx, ranks[:, 0], ranks[:, 1]


def _early_rf(grayordinates: np.ndarray, rng: np.random.Generator):
    """RF centre (x, y) and size for early-visual grayordinates (retinotopic, jittered)."""
    n = len(grayordinates)
    x, y, size = np.zeros(n), np.zeros(n), np.zeros(n)
    areas = atlas.area_of(grayordinates)
    structures, _ = atlas.surface_vertex(grayordinates)
    for area in atlas.EARLY_VISUAL_AREAS:
        for hemi, struct, side in (
            ("left", atlas.CORTEX_LEFT, 1.0),
            ("right", atlas.CORTEX_RIGHT, -1.0),
        ):
            sel = np.flatnonzero((areas == area) & (structures == struct))
            if not len(sel):
                continue
            idx, u, v = _retinotopy(area, hemi)
            pos = np.searchsorted(idx, grayordinates[sel])
            ecc = 0.03 + 0.97 * u[pos] ** 1.5  # cortical magnification: more cortex for the fovea
            angle = (0.5 - v[pos]) * np.pi  # dorsal (v = 1) → lower visual field
            x[sel] = side * ecc * np.cos(angle)  # a hemisphere sees the opposite hemifield
            y[sel] = ecc * np.sin(angle)
            size[sel] = _RF_SIZE[area] * (0.5 + ecc)
    x = np.clip(x + rng.normal(0, 0.04, n), -1, 1)
    y = np.clip(y + rng.normal(0, 0.04, n), -1, 1)
    size = size * rng.lognormal(0, 0.15, n)
    return x, y, size


def _gaussian_rf(x: np.ndarray, y: np.ndarray, size: np.ndarray, grid: int) -> np.ndarray:
    """Gaussian RF weights ``[grid*grid, N]`` over block centres (row 0 at the top), sum 1."""
    c = -1 + (2 * np.arange(grid) + 1) / grid
    px, py = np.meshgrid(c, -c)  # [grid, grid]: x along columns, y up
    d2 = (px.reshape(-1, 1) - x[None]) ** 2 + (py.reshape(-1, 1) - y[None]) ** 2
    sigma = np.maximum(size, 1.0 / grid)[None]  # at least half a block
    w = np.exp(-d2 / (2 * sigma**2))
    return (w / w.sum(axis=0, keepdims=True)).astype(np.float32)


def make_noise_model(
    grayordinates: np.ndarray,
    rng: np.random.Generator,
    network_share: tuple[float, float] = (0.1, 0.3),
    area_share: tuple[float, float] = (0.0, 0.1),
) -> NoiseModel:
    """Per-voxel noise parameters for grayordinates ``[G]`` (91k indices, file order)."""
    n = len(grayordinates)
    labels = atlas.mmp_labels()[grayordinates]
    _, area_id = np.unique(labels, return_inverse=True)
    return NoiseModel(
        network=atlas.yeo17_networks()[grayordinates].astype(np.int64),
        area=area_id.astype(np.int64),
        network_share=rng.uniform(*network_share, n).astype(np.float32),
        area_share=rng.uniform(*area_share, n).astype(np.float32),
        ar_phi=rng.uniform(0.2, 0.5, n).astype(np.float32),
        white_share=rng.uniform(0.3, 0.6, n).astype(np.float32),
        baseline=(BASELINE * rng.uniform(0.7, 1.3, n)).astype(np.float32),
    )


def make_subject_brain(
    grayordinates: np.ndarray,
    n_classes: int,
    rng: np.random.Generator,
    hrf_peak_range: tuple[float, float] = (4.0, 7.0),
    responsive_fraction: float = RESPONSIVE_FRACTION,
    grid: int = FEATURE_GRID,
    rate_hz: float = FEATURE_HZ,
    shared_tuning: np.ndarray | None = None,
    similarity: float = 0.0,
) -> SubjectBrain:
    """Draw one subject's brain for the grayordinates ``[G]`` (91k indices, file order).

    The voxel's role follows its Glasser area; each visual voxel responds with probability
    ``responsive_fraction``. HRF peaks: a subject mean drawn in the middle half of
    ``hrf_peak_range``, plus a per-voxel spread, clipped to the range.

    ``shared_tuning`` ``[n_classes, G]``: a class-tuning map the subject shares with others
    (:func:`related_tuning`); each class voxel's tuning is then ``similarity ·`` the map at
    its vertex ``+ √(1 − similarity²) ·`` its own draw, so two subjects' tunings at one vertex
    correlate by about ``similarity²`` through the map alone, or ``similarity`` with a subject
    whose own tuning *is* the map. Unset: the subject's own draw (the same random numbers
    either way).
    """
    grayordinates = np.asarray(grayordinates, np.int64)
    n = len(grayordinates)
    areas = atlas.area_of(grayordinates)
    role = np.array([_AREA_ROLE.get(a, 0) for a in areas], np.int8)
    responsive = (role > 0) & (rng.random(n) < responsive_fraction)

    lo, hi = hrf_peak_range
    subject_peak = rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))
    hrf_peak = np.clip(subject_peak + rng.normal(0, 0.2 * (hi - lo), n), lo, hi)

    rf_x, rf_y, rf_size = (np.full(n, np.nan) for _ in range(3))
    early = np.flatnonzero(responsive & (role == 1))
    motion = np.flatnonzero(responsive & (role == 2))
    klass = np.flatnonzero(responsive & (role == 3))

    # Early visual: retinotopic RF x channel preference (luminance sign, colour opponency,
    # contrast); V4 leans on colour.
    ex, ey, es = _early_rf(grayordinates[early], rng)
    rf_x[early], rf_y[early], rf_size[early] = ex, ey, es
    colour_std = np.where(areas[early] == "V4", 1.2, 0.6)
    prefs = np.stack(
        [
            rng.normal(0, 1, len(early)),
            rng.normal(0, 1, len(early)) * colour_std,
            rng.normal(0, 1, len(early)) * colour_std,
            np.abs(rng.normal(1, 0.5, len(early))),
        ],
        axis=1,
    )
    w = _gaussian_rf(ex, ey, es, grid)  # [P, Ne]
    image_weights = (w[:, None, :] * prefs.T[None, :, :].astype(np.float32)).reshape(
        grid * grid * 4, len(early)
    )

    # Motion: a large RF in the contralateral hemifield, energy plus a preferred direction.
    structures, _ = atlas.surface_vertex(grayordinates[motion])
    side = np.where(structures == atlas.CORTEX_LEFT, 1.0, -1.0)
    mx = side * rng.uniform(0.0, 0.8, len(motion))
    my = rng.uniform(-0.8, 0.8, len(motion))
    ms = rng.uniform(0.3, 0.6, len(motion))
    rf_x[motion], rf_y[motion], rf_size[motion] = mx, my, ms
    direction = rng.uniform(0, 2 * np.pi, len(motion))
    tuning = rng.uniform(0.5, 1.0, len(motion))
    mprefs = np.stack(
        [
            rng.uniform(0.5, 1.0, len(motion)),
            tuning * np.cos(direction),
            tuning * np.sin(direction),
        ],
        axis=1,
    )
    w = _gaussian_rf(mx, my, ms, grid)
    motion_weights = (w[:, None, :] * mprefs.T[None, :, :].astype(np.float32)).reshape(
        grid * grid * 3, len(motion)
    )

    class_tuning = rng.normal(0, 1, (n_classes, len(klass))).astype(np.float32)
    if shared_tuning is not None:
        if not 0.0 <= similarity <= 1.0:
            raise ValueError(f"similarity must lie in [0, 1], not {similarity}")
        own = math.sqrt(1.0 - similarity**2)
        class_tuning = (similarity * shared_tuning[:, klass] + own * class_tuning).astype(
            np.float32
        )
    return SubjectBrain(
        grayordinates=grayordinates,
        role=role,
        responsive=responsive,
        hrf_peak_s=hrf_peak.astype(np.float32),
        rf_x=rf_x.astype(np.float32),
        rf_y=rf_y.astype(np.float32),
        rf_size=rf_size.astype(np.float32),
        early=early,
        motion=motion,
        klass=klass,
        image_weights=image_weights.astype(np.float32),
        motion_weights=motion_weights.astype(np.float32),
        class_tuning=class_tuning,
        rate_hz=float(rate_hz),
        noise=make_noise_model(grayordinates, rng),
    )


# --------------------------------------------------------------------------------------------
# signal and noise


def stimulus_bold(
    brain: SubjectBrain, features: StimulusFeatures, n_volumes: int, tr_s: float
) -> np.ndarray:
    """Noise-free stimulus-driven BOLD ``[n_volumes, n_responsive]`` (columns: brain.columns).

    The neural drive (relative to the blank screen) is convolved with each voxel's HRF on the
    run clock (the screen was blank before the run) and averaged over each TR [t·TR, (t+1)·TR).
    """
    if features.rate_hz != brain.rate_hz or features.grid**2 * 4 != brain.image_weights.shape[0]:
        raise ValueError("features and brain disagree on the feature rate or grid")
    s = features.n_samples
    image = features.image.reshape(s, -1)
    blank = features.blank_image.reshape(1, -1)
    neural = np.concatenate(
        [
            (image - blank) @ brain.image_weights,
            features.motion.reshape(s, -1) @ brain.motion_weights,
            features.classes @ brain.class_tuning,
        ],
        axis=1,
    )
    n_samples = int(np.ceil(n_volumes * tr_s * features.rate_hz - 1e-9))
    if s < n_samples:  # the screen stays blank until the end of the run
        neural = np.concatenate([neural, np.zeros((n_samples - s, neural.shape[1]), np.float32)])
    neural = neural[:n_samples]
    if neural.shape[1] == 0:
        return np.zeros((n_volumes, 0), np.float32)
    bold = _causal_convolve(neural, brain.hrf)
    volume = np.floor((np.arange(n_samples) + 0.5) / features.rate_hz / tr_s).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, volume[1:] != volume[:-1]])
    counts = np.diff(np.r_[starts, n_samples])
    return (np.add.reduceat(bold, starts, axis=0) / counts[:, None]).astype(np.float32)


def _causal_convolve(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Column-wise causal convolution by FFT: ``y[t, n] = sum_k kernels[k, n] x[t - k, n]``,
    ``x: [S, N]``, kernels ``[L, N]`` → ``[S, N]`` float32 (x is zero before t = 0)."""
    import scipy.fft

    s, length = x.shape[0], kernels.shape[0]
    n_fft = scipy.fft.next_fast_len(s + length - 1, real=True)
    x, kernels = x.astype(np.float32, copy=False), kernels.astype(np.float32, copy=False)
    spec = scipy.fft.rfft(x, n=n_fft, axis=0)
    spec *= scipy.fft.rfft(kernels, n=n_fft, axis=0)
    return scipy.fft.irfft(spec, n=n_fft, axis=0)[:s].astype(np.float32, copy=False)


def calibrate_gain(stimulus: np.ndarray, snr: float) -> np.ndarray:
    """Per-voxel gain ``[N]`` making the std over time of ``gain * stimulus`` equal ``snr``.

    stimulus: ``[T, N]`` noise-free BOLD of a calibration run (the first training segment);
    the noise has unit std, so ``snr`` is the signal-to-noise ratio of each responsive voxel.
    """
    std = stimulus.std(axis=0)
    if (std <= 1e-8 * max(float(std.max(initial=0)), 1e-30)).any():
        raise RuntimeError("a responsive voxel has no stimulus-driven variance")
    return (snr / std).astype(np.float32)


def _band_limited(
    rng: np.random.Generator, n: int, dt: float, k: int, band_hz: tuple[float, float]
) -> np.ndarray:
    """``[n, k]`` unit-variance noise with its power in ``band_hz`` (spontaneous fluctuations)."""
    freqs = np.fft.rfftfreq(n, dt)
    keep = (freqs >= band_hz[0]) & (freqs <= band_hz[1])
    if not keep.any():
        keep[min(1, len(keep) - 1)] = True
    spec = np.zeros((len(freqs), k), np.complex128)
    m = int(keep.sum())
    spec[keep] = rng.normal(size=(m, k)) + 1j * rng.normal(size=(m, k))
    x = np.fft.irfft(spec, n=n, axis=0)
    x -= x.mean(axis=0)
    return (x / np.maximum(x.std(axis=0), 1e-12)).astype(np.float32)


_NOISE_CHUNK = 8192  # voxels per block: bounds memory at full scale (fixed: it sets the RNG order)


def noise(model: NoiseModel, n_volumes: int, tr_s: float, rng: np.random.Generator) -> np.ndarray:
    """One run's noise ``[n_volumes, G]`` float32, unit variance per voxel, plus drift.

    Spontaneous fluctuations (0.01–0.1 Hz) shared by the voxels of a Yeo-17 network and of a
    Glasser area, AR(1) noise, white noise; then a Legendre drift of orders 1–3 (not counted in
    the unit variance: detrending removes it).
    """
    g = len(model.network)
    net = _band_limited(rng, n_volumes, tr_s, int(model.network.max(initial=0)) + 1, (0.01, 0.1))
    area = _band_limited(rng, n_volumes, tr_s, int(model.area.max(initial=0)) + 1, (0.01, 0.1))
    x = np.linspace(-1, 1, n_volumes)
    legendre = np.stack([x, 1.5 * x**2 - 0.5, 2.5 * x**3 - 1.5 * x], axis=1).astype(np.float32)
    out = np.empty((n_volumes, g), np.float32)
    for lo in range(0, g, _NOISE_CHUNK):
        sl = slice(lo, min(lo + _NOISE_CHUNK, g))
        n = sl.stop - sl.start
        phi = model.ar_phi[sl]
        e = rng.standard_normal((n_volumes, n), dtype=np.float32)
        innov = np.sqrt(1 - phi**2)
        for t in range(1, n_volumes):  # AR(1), stationary with unit variance
            e[t] = phi * e[t - 1] + innov * e[t]
        rest = 1 - model.network_share[sl] - model.area_share[sl]
        block = out[:, sl]
        np.multiply(e, np.sqrt(rest * (1 - model.white_share[sl])), out=block)
        block += rng.standard_normal((n_volumes, n), dtype=np.float32) * np.sqrt(
            rest * model.white_share[sl]
        )
        block += net[:, model.network[sl]] * np.sqrt(model.network_share[sl])
        block += area[:, model.area[sl]] * np.sqrt(model.area_share[sl])
        block += legendre @ rng.normal(0, DRIFT_STD, (3, n)).astype(np.float32)
    return out


def compose_run(
    noise_model: NoiseModel,
    run_noise: np.ndarray,
    columns: np.ndarray | None = None,
    signal: np.ndarray | None = None,
) -> np.ndarray:
    """BOLD intensities ``[T, G]`` float32: baseline * (1 + 1% * (noise + signal)).

    run_noise: ``[T, G]`` from :func:`noise` (overwritten: the result reuses its memory).
    signal: ``[T, len(columns)]`` gain-scaled stimulus-driven BOLD added to ``columns``.
    """
    units = run_noise
    if signal is not None and columns is not None and len(columns):
        units[:, columns] += signal
    units *= np.float32(0.01)
    units += np.float32(1)
    units *= noise_model.baseline
    return units
