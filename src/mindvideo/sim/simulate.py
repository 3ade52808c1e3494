"""Stage 0 (ours): simulated datasets in the exact raw layouts of Wen 2018 and HCP.

:func:`simulate_wen2018` writes what a user of the Purdue "video_fmri_dataset" has on disk, so
that the same loader reads simulated and real data (DESIGN.md, "The real datasets")::

    OUT/subjectN/fmri/seg{k}/cifti/seg{k}_{r}_Atlas.dtseries.nii     k = 1..train_segments
    OUT/subjectN/fmri/test{k}/cifti/test{k}_{r}_Atlas.dtseries.nii   k = 1..test_segments
    OUT/stimuli/seg{k}.mp4, OUT/stimuli/test{k}.mp4                  480 s at cfg.fps
    OUT/ground_truth.npz, OUT/scenes.json                            what generated the data

Timeline of a run (TR = 2 s): 245 volumes (246 for test2 and later test segments). The first
``drop_start`` volumes (1, or 2 for the 246-volume runs) and the last 4 are those the authors
drop; during them the screen is mid-grey. The movie starts at ``drop_start * TR`` seconds, so
after the authors' drop kept volume t is movie time [2t, 2t + 2) — the pairing of DESIGN.md.

:func:`simulate_hcp_rest` writes an unlabeled resting-state corpus in HCP layout
(``OUT/{subject}/MNINonLinear/Results/rfMRI_{run}/rfMRI_{run}_Atlas.dtseries.nii``) on the same
grayordinates, for masked brain modeling (paper 3.3).

Both are deterministic for a seed and write the dataset into a temporary directory beside
``out``, renamed onto it at the end: an interrupted run leaves no half-written dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mindvideo.config import save_config
from mindvideo.data import atlas
from mindvideo.data.cifti import grayordinate_axis, write_dtseries
from mindvideo.sim import brain as brain_sim
from mindvideo.utils import UserError, atomic_dir, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from nibabel.cifti2 import BrainModelAxis

    from mindvideo.config import SimulateConfig
    from mindvideo.sim.stimuli import Scene

log = logging.getLogger(__name__)

__all__ = [
    "MOVIE_S",
    "TR_S",
    "SegmentTiming",
    "estimate_simulate_bytes",
    "render_workers",
    "simulate_hcp_rest",
    "simulate_wen2018",
    "simulated_axis",
    "subject_brains",
    "wen2018_segments",
]

TR_S = 2.0
"""Wen 2018 repetition time, seconds."""
MOVIE_S = 480.0
"""Length of one Wen 2018 segment (8 minutes)."""
DROP_END = 4
"""Volumes the authors drop at the end of every run."""


@dataclass(frozen=True)
class SegmentTiming:
    """One Wen 2018 segment: its runs' volume count, the volumes the authors drop, repetitions."""

    name: str
    n_volumes: int
    drop_start: int
    drop_end: int
    repetitions: int

    @property
    def key(self) -> tuple[int, int]:
        """(0 for training / 1 for test, k): seeds this segment's random streams, so that a
        segment does not change with the number of other segments."""
        kind = 1 if self.name.startswith("test") else 0
        return kind, int(self.name.removeprefix("test").removeprefix("seg"))

    @property
    def movie_onset_s(self) -> float:
        """Run time at which the movie starts (the end of the dropped lead-in volumes)."""
        return self.drop_start * TR_S

    @property
    def kept(self) -> slice:
        """The volumes the authors keep: 240 = 480 s of movie."""
        return slice(self.drop_start, self.n_volumes - self.drop_end)


def wen2018_segments(cfg: SimulateConfig) -> list[SegmentTiming]:
    """Training segments seg1..K (245 volumes) then test1 (245) and test2.. (246 volumes)."""
    kept = round(MOVIE_S / TR_S)
    out = [
        SegmentTiming(f"seg{k}", kept + 1 + DROP_END, 1, DROP_END, cfg.train_repetitions)
        for k in range(1, cfg.train_segments + 1)
    ]
    for k in range(1, cfg.test_segments + 1):
        lead = 1 if k == 1 else 2
        out.append(
            SegmentTiming(f"test{k}", kept + lead + DROP_END, lead, DROP_END, cfg.test_repetitions)
        )
    return out


def _rng(*key: int) -> np.random.Generator:
    """An independent generator for each (seed, purpose, ...) key: results do not depend on
    the order in which things are simulated."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def simulated_axis(cfg: SimulateConfig) -> BrainModelAxis:
    """The brain-model axis every simulated file of ``cfg`` uses (Wen and rest alike)."""
    return grayordinate_axis(
        cfg.grayordinates,
        cfg.other_vertices,
        _rng(cfg.seed, 0),
        visual_vertices=cfg.visual_vertices,
    )


VISUAL_AREA_VERTICES = 8200
"""About how many grayordinates the visual areas hold (``grayordinates: visual``)."""
ALL_GRAYORDINATES = 91282
MP4_RATIO = 0.05
"""Rough bytes of H.264 per raw RGB byte for the stimuli (an estimate, not a promise)."""


def estimate_simulate_bytes(cfg: SimulateConfig, rest: bool = False) -> int:
    """About how many bytes :func:`simulate_wen2018` (or, with ``rest``,
    :func:`simulate_hcp_rest`) writes for ``cfg``: the float32 CIFTI runs and the mp4 stimuli."""
    if cfg.grayordinates == "visual":
        n_gray = (cfg.visual_vertices or VISUAL_AREA_VERTICES) + cfg.other_vertices
    else:
        n_gray = ALL_GRAYORDINATES
    if rest:
        return 4 * n_gray * cfg.rest.subjects * len(cfg.rest.runs) * cfg.rest.volumes
    volumes = sum(seg.n_volumes * seg.repetitions for seg in wen2018_segments(cfg))
    segments = cfg.train_segments + cfg.test_segments
    video = segments * MOVIE_S * cfg.fps * cfg.frame_size**2 * 3 * MP4_RATIO
    return int(4 * n_gray * cfg.subjects * volumes + video)


def _check_out(out: Path, cfg: SimulateConfig, rest: bool = False) -> None:
    """``out`` must be absent, empty, or this command's own finished dataset (same kind, same
    configuration: a run killed after its dataset was in place), which is made again."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory path for the dataset.")
    if out.is_dir() and any(out.iterdir()):
        if _same_finished_dataset(out, cfg, rest):
            log.info("%s holds this command's finished dataset; writing it again", out)
            return
        raise UserError(
            f"Output directory {out} is not empty; choose another --out or delete it first."
        )


def _same_finished_dataset(out: Path, cfg: SimulateConfig, rest: bool) -> bool:
    """Whether ``out`` is a finished dataset of this kind written with ``cfg`` (its
    ``config.yaml`` is written inside the staged folder, so it exists only in a finished one)."""
    from mindvideo.config import load_config

    is_rest = (out / "ground_truth.npz").is_file() and not (out / "scenes.json").exists()
    is_wen = (out / "scenes.json").is_file()
    if not (out / "config.yaml").is_file() or not (is_rest if rest else is_wen):
        return False
    try:
        return load_config(type(cfg), out / "config.yaml") == cfg
    except Exception:  # not a readable config of ours: not ours to replace
        return False


def _check_config(cfg: SimulateConfig) -> None:
    problems = []
    if cfg.subjects < 1:
        problems.append(f"subjects must be at least 1, not {cfg.subjects}")
    if cfg.train_segments < 1 or cfg.train_repetitions < 1:
        problems.append("train_segments and train_repetitions must be at least 1")
    if cfg.test_segments < 0 or (cfg.test_segments and cfg.test_repetitions < 1):
        problems.append("test_segments must be >= 0 and test_repetitions >= 1")
    if cfg.frame_size % 2 or cfg.frame_size < brain_sim.FEATURE_GRID:
        problems.append(
            f"frame_size must be even and at least {brain_sim.FEATURE_GRID}, not {cfg.frame_size}"
        )
    if cfg.fps < 1:
        problems.append(f"fps must be at least 1, not {cfg.fps}")
    if not cfg.snr > 0:
        problems.append(f"snr must be positive, not {cfg.snr}")
    if not 0.0 <= cfg.subject_similarity <= 1.0:
        problems.append(f"subject_similarity must lie in [0, 1], not {cfg.subject_similarity}")
    if cfg.subject_snr_spread < 0 or cfg.subject_responsive_spread < 0:
        problems.append("subject_snr_spread and subject_responsive_spread must be >= 0")
    if not 0 < cfg.hrf_peak_min_s <= cfg.hrf_peak_max_s:
        problems.append("hrf_peak_min_s and hrf_peak_max_s need 0 < min <= max")
    if problems:
        raise UserError(f"Invalid simulate config: {problems[0]}; fix that key.")


def _tap(
    chunks: Iterable[np.ndarray], scenes: Sequence[Scene], extractor: brain_sim.FeatureExtractor
) -> Iterator[np.ndarray]:
    """Pass the rendered scenes on to the video writer, feeding each to the brain's features."""
    for scene, chunk in zip(scenes, chunks, strict=True):
        extractor.add(chunk, scene.class_id)
        yield chunk


def _scene_dict(scene: Scene) -> dict:
    d = dataclasses.asdict(scene)
    d["class"] = d.pop("class_name")
    return d


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _stimulus(
    cfg: SimulateConfig, seg: SegmentTiming, path: Path
) -> tuple[list[Scene], brain_sim.StimulusFeatures]:
    """Plan and render one segment to ``path`` (mp4); return its scenes and the brain's features
    of the whole run (grey lead-in, movie, grey tail)."""
    from mindvideo.data.video import write_video
    from mindvideo.sim.stimuli import plan_segment, render_segment
    from mindvideo.sim.vocabulary import CLASSES

    rng = _rng(cfg.seed, 3, *seg.key)
    scenes = plan_segment(
        rng, MOVIE_S, cfg.scene_min_s, cfg.scene_max_s, real_fraction=cfg.real_scene_fraction
    )
    render_seed = int(rng.integers(2**31))
    extractor = brain_sim.FeatureExtractor(cfg.fps, len(CLASSES))
    size = (cfg.frame_size, cfg.frame_size)
    extractor.add_blank(seg.movie_onset_s, size=size)
    frames = render_segment(scenes, cfg.fps, cfg.frame_size, render_seed)
    write_video(path, _tap(frames, scenes, extractor), cfg.fps)
    extractor.add_blank(seg.n_volumes * TR_S - seg.movie_onset_s - MOVIE_S)
    return scenes, extractor.result()


def render_workers() -> int:
    """How many processes render stimuli: the command's fixed thread count (``--threads``,
    ``MINDVIDEO_THREADS``), else every usable CPU. Rendering and encoding are single-threaded
    work in separate processes, which share a busy CPU without the stalls that oversubscribed
    torch threads suffer (:mod:`mindvideo.utils.threads`), so automatic mode takes them all."""
    from mindvideo.utils.threads import current_choice, fixed_request, usable_cpus

    choice = current_choice()
    if choice is None:
        fixed = fixed_request(None)[1]
        return fixed if fixed is not None else usable_cpus()
    return choice.cpus if choice.automatic else choice.threads


def _stimuli(
    cfg: SimulateConfig, segments: Sequence[SegmentTiming], folder: Path, workers: int | None
) -> Iterator[tuple[list[Scene], brain_sim.StimulusFeatures]]:
    """Each segment's :func:`_stimulus` (``folder/NAME.mp4``), in order; with more than one
    worker, rendered by that many processes while the caller simulates the fMRI of the
    segments already done."""
    n = min(render_workers() if workers is None else int(workers), len(segments))
    jobs = [(cfg, seg, folder / f"{seg.name}.mp4") for seg in segments]
    if n <= 1:
        for job in jobs:
            yield _render_job(job)
        return
    yield from _in_processes(jobs, n)


def _in_processes(jobs: list, n: int) -> Iterator[tuple[list[Scene], brain_sim.StimulusFeatures]]:
    """:func:`_render_job` of every job in ``n`` spawned processes, each fed the next job as it
    finishes one; results in the jobs' order. Pipes, not a ``multiprocessing.Pool``: a pool's
    semaphores outlive a command that ends at once on Ctrl-C (:mod:`mindvideo.cli.main`), and
    the resource tracker then warns about them on stderr."""
    import multiprocessing
    import signal
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    workers: list = []
    finished = False
    # The workers start with SIGINT blocked (the mask is inherited), so a Ctrl-C reaches this
    # process alone, which stops them; they die with it when it is killed (Linux).
    mask = getattr(signal, "pthread_sigmask", lambda how, signals: set())  # not on Windows
    blocked = mask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for _ in range(n):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_render_worker, args=(theirs, os.getpid()), daemon=True)
            proc.start()
            theirs.close()
            workers.append((proc, mine))
        mask(signal.SIG_SETMASK, blocked)
        done: dict[int, tuple] = {}
        busy: dict = {}  # connection → job index
        queued = iter(range(len(jobs)))
        for _, conn in workers:
            i = next(queued, None)
            if i is not None:
                conn.send((i, jobs[i]))
                busy[conn] = i
        for want in range(len(jobs)):
            while want not in done:
                for conn in wait(list(busy)):
                    try:
                        ok, value = conn.recv()
                    except EOFError:
                        raise RuntimeError(
                            "A stimulus render process ended without an answer (killed, or out "
                            "of memory?); run again, with --threads 1 to render in this process."
                        ) from None
                    if not ok:
                        raise value
                    done[busy.pop(conn)] = value
                    i = next(queued, None)
                    if i is not None:
                        conn.send((i, jobs[i]))
                        busy[conn] = i
            yield done.pop(want)
        for _, conn in workers:
            conn.send(None)
        finished = True
    finally:
        mask(signal.SIG_SETMASK, blocked)
        for proc, conn in workers:
            if not finished:
                proc.kill()  # nothing is written into the output after this returns
            proc.join()
            conn.close()


def _render_worker(conn: Any, parent: int) -> None:
    """A stimulus process: renders the jobs it is sent until it is sent ``None``; answers
    ``(True, result)`` or ``(False, exception)``. It ignores Ctrl-C (its parent stops it), dies
    with its parent (Linux) and uses one BLAS thread."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            answer = (True, _render_job(message[1]))
        except Exception as error:  # the parent raises it
            answer = (False, error)
        try:
            conn.send(answer)
        except Exception as error:  # an exception that does not pickle
            conn.send((False, RuntimeError(f"rendering a stimulus failed: {error!r}")))


def _render_job(
    job: tuple[SimulateConfig, SegmentTiming, Path],
) -> tuple[list[Scene], brain_sim.StimulusFeatures]:
    with brain_sim.single_thread_blas():
        return _stimulus(*job)


def simulate_wen2018(
    cfg: SimulateConfig, out: str | os.PathLike, workers: int | None = None
) -> Path:
    """Write a simulated dataset in the raw Wen 2018 layout to ``out``; return ``out``.

    ``workers``: processes rendering the segments' stimuli side by side (None:
    :func:`render_workers`). Each segment has its own seed, so the dataset is the same, byte
    for byte, whatever the count.

    Raises a UserError if ``out`` exists and is not empty (unless it is this command's finished
    dataset, which is written again), or for an invalid config value.
    """
    from tqdm import tqdm

    from mindvideo.sim.vocabulary import CLASSES, MOTIONS

    out = Path(out)
    _check_out(out, cfg)
    _check_config(cfg)
    start = time.perf_counter()
    axis = simulated_axis(cfg)
    gray = atlas.grayordinate_index(axis)
    segments = wen2018_segments(cfg)
    brains, snrs = subject_brains(cfg, gray, len(CLASSES))
    gains: list[np.ndarray | None] = [None] * cfg.subjects
    n_subjects, n_segments, n_gray = cfg.subjects, len(segments), len(axis)
    log.info(
        "simulating %d subject(s) x %d segments on %d grayordinates", n_subjects, n_segments, n_gray
    )
    scenes_by_segment: dict[str, list[dict]] = {}
    total = cfg.subjects * sum(seg.repetitions for seg in segments)
    with (
        atomic_dir(out) as tmp,
        tqdm(total=total, unit="run", desc="simulate", disable=None) as bar,
        # closed first: the workers stop before the staging folder is cleaned up
        contextlib.closing(_stimuli(cfg, segments, tmp / "stimuli", workers)) as stimuli,
    ):
        for seg, (scenes, features) in zip(segments, stimuli, strict=True):
            scenes_by_segment[seg.name] = [_scene_dict(s) for s in scenes]
            bar.set_postfix_str(f"{seg.name} fMRI")
            for s, brain in enumerate(brains):
                stim = brain_sim.stimulus_bold(brain, features, seg.n_volumes, TR_S)
                if gains[s] is None:  # calibrated once, on the first segment
                    gains[s] = brain_sim.calibrate_gain(stim[seg.kept], snrs[s])
                signal = stim * gains[s]
                for r in range(1, seg.repetitions + 1):
                    run_noise = brain_sim.noise(
                        brain.noise, seg.n_volumes, TR_S, _rng(cfg.seed, 2, s, *seg.key, r)
                    )
                    data = brain_sim.compose_run(brain.noise, run_noise, brain.columns, signal)
                    name = f"{seg.name}_{r}_Atlas.dtseries.nii"
                    path = tmp / f"subject{s + 1}" / "fmri" / seg.name / "cifti" / name
                    write_dtseries(path, data, axis, TR_S)
                    bar.update()
        _save_npz(tmp / "ground_truth.npz", _ground_truth(cfg, gray, brains, gains, snrs))
        meta = {
            "classes": list(CLASSES),
            "motions": list(MOTIONS),
            "tr_s": TR_S,
            "fps": cfg.fps,
            "movie_duration_s": MOVIE_S,
            "timing": {
                seg.name: {
                    "n_volumes": seg.n_volumes,
                    "drop_start": seg.drop_start,
                    "drop_end": seg.drop_end,
                    "movie_onset_s": seg.movie_onset_s,
                    "repetitions": seg.repetitions,
                }
                for seg in segments
            },
            "segments": scenes_by_segment,
        }
        atomic_write_text(tmp / "scenes.json", json.dumps(meta, indent=1) + "\n")
        save_config(cfg, tmp / "config.yaml")
    log.info("wrote %s (%d runs) in %.1f s", out, total, time.perf_counter() - start)
    return out


def subject_brains(
    cfg: SimulateConfig, gray: np.ndarray, n_classes: int
) -> tuple[list[brain_sim.SubjectBrain], list[float]]:
    """Every subject's brain and SNR. Subject 1 is drawn from ``cfg`` alone (the same brain
    whatever ``cfg.subjects`` is); the others differ from it as real subjects do: an SNR and a
    responsive fraction drawn around ``cfg``'s (log-normal, ``subject_snr_spread`` and
    ``subject_responsive_spread``), so their ROI and voxel count differ; their own HRFs, noise,
    receptive-field jitter and responsive voxels; and a class tuning related to subject 1's at
    the same vertex by ``subject_similarity`` (:func:`~mindvideo.sim.brain.related_tuning`)."""
    hrf_range = (cfg.hrf_peak_min_s, cfg.hrf_peak_max_s)
    first = brain_sim.make_subject_brain(
        gray, n_classes, _rng(cfg.seed, 1, 0), hrf_range, cfg.responsive_fraction
    )
    brains, snrs = [first], [float(cfg.snr)]
    if cfg.subjects > 1:
        shared = brain_sim.related_tuning(first, len(gray), _rng(cfg.seed, 5))
    for s in range(1, cfg.subjects):
        rng = _rng(cfg.seed, 6, s)
        snrs.append(float(cfg.snr * np.exp(rng.normal(0, cfg.subject_snr_spread))))
        fraction = cfg.responsive_fraction * np.exp(rng.normal(0, cfg.subject_responsive_spread))
        brains.append(
            brain_sim.make_subject_brain(
                gray,
                n_classes,
                _rng(cfg.seed, 1, s),
                hrf_range,
                float(np.clip(fraction, 0.05, max(0.95, cfg.responsive_fraction))),
                shared_tuning=shared,
                similarity=cfg.subject_similarity,
            )
        )
    return brains, snrs


def _ground_truth(
    cfg: SimulateConfig,
    gray: np.ndarray,
    brains: Sequence[brain_sim.SubjectBrain],
    gains: Sequence[np.ndarray | None],
    snrs: Sequence[float],
) -> dict[str, np.ndarray]:
    """Arrays per grayordinate (file order): shared ones, then ``subjectN/...`` per subject."""
    out: dict[str, np.ndarray] = {
        "grayordinate_index": gray,
        "area": atlas.mmp_labels()[gray],
        "role": brains[0].role,
        "role_names": np.array(brain_sim.ROLES),
        "snr": np.float32(cfg.snr),
    }
    for s, (brain, gain, snr) in enumerate(zip(brains, gains, snrs, strict=True), start=1):
        full_gain = np.zeros(len(gray), np.float32)
        preferred = np.full(len(gray), -1, np.int64)
        if gain is not None:
            full_gain[brain.columns] = gain
        if brain.class_tuning.size:
            preferred[brain.klass] = brain.class_tuning.argmax(axis=0)
        out |= {
            f"subject{s}/responsive": brain.responsive,
            f"subject{s}/hrf_peak_s": brain.hrf_peak_s,
            f"subject{s}/rf_x": brain.rf_x,
            f"subject{s}/rf_y": brain.rf_y,
            f"subject{s}/rf_size": brain.rf_size,
            f"subject{s}/preferred_class": preferred,
            f"subject{s}/gain": full_gain,
            f"subject{s}/snr": np.float32(snr),
        }
    out["responsive"] = out["subject1/responsive"]
    out["hrf_peak_s"] = out["subject1/hrf_peak_s"]
    return out


def hcp_subject_ids(seed: int, n: int) -> list[str]:
    """``n`` distinct six-digit subject ids like HCP's (e.g. ``"100307"``), sorted."""
    ids = _rng(seed, 5).choice(900000, size=n, replace=False) + 100000
    return [str(i) for i in sorted(ids)]


def simulate_hcp_rest(cfg: SimulateConfig, out: str | os.PathLike) -> Path:
    """Write a resting-state corpus in HCP layout to ``out``; return ``out``.

    ``cfg.rest`` sets subjects, runs, volumes and TR; the grayordinates are those of the Wen
    simulation with the same config. Spontaneous activity: band-limited (0.01–0.1 Hz)
    fluctuations shared within Yeo-17 networks (30–50% of a voxel's variance) and Glasser
    areas (10–20%), AR(1) and white noise, slow drift.
    """
    from tqdm import tqdm

    out = Path(out)
    _check_out(out, cfg, rest=True)
    rest = cfg.rest
    if rest.subjects < 1 or not rest.runs or rest.volumes < 2 or not rest.tr_s > 0:
        raise UserError(
            "Invalid rest config: rest.subjects >= 1, a non-empty rest.runs, rest.volumes >= 2 "
            "and rest.tr_s > 0 are needed; fix those keys."
        )
    start = time.perf_counter()
    axis = simulated_axis(cfg)
    gray = atlas.grayordinate_index(axis)
    subjects = hcp_subject_ids(cfg.seed, rest.subjects)
    total = len(subjects) * len(rest.runs)
    truth: dict[str, np.ndarray] = {
        "grayordinate_index": gray,
        "area": atlas.mmp_labels()[gray],
        "yeo17": atlas.yeo17_networks()[gray],
        "subjects": np.array(subjects),
    }
    with (
        atomic_dir(out) as tmp,
        tqdm(total=total, unit="run", desc="simulate rest", disable=None) as bar,
    ):
        for s, subject in enumerate(subjects):
            model = brain_sim.make_noise_model(
                gray, _rng(cfg.seed, 4, s), network_share=(0.3, 0.5), area_share=(0.1, 0.2)
            )
            truth[f"{subject}/network_share"] = model.network_share
            truth[f"{subject}/area_share"] = model.area_share
            for r, run in enumerate(rest.runs):
                run_noise = brain_sim.noise(model, rest.volumes, rest.tr_s, _rng(cfg.seed, 6, s, r))
                data = brain_sim.compose_run(model, run_noise)
                folder = tmp / subject / "MNINonLinear" / "Results" / f"rfMRI_{run}"
                write_dtseries(folder / f"rfMRI_{run}_Atlas.dtseries.nii", data, axis, rest.tr_s)
                bar.update()
        _save_npz(tmp / "ground_truth.npz", truth)
        save_config(cfg, tmp / "config.yaml")
    log.info("wrote %s (%d runs) in %.1f s", out, total, time.perf_counter() - start)
    return out
