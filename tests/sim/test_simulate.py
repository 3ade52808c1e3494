"""The simulated Wen 2018 dataset and HCP rest corpus: layout, formats, determinism, signal."""

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pytest
from nibabel import cifti2

from mindvideo.data import atlas
from mindvideo.data.cifti import cortex_indices, read_dtseries
from mindvideo.sim.simulate import (
    _stimuli,
    simulate_hcp_rest,
    simulate_wen2018,
    simulated_axis,
    subject_brains,
    wen2018_segments,
)
from mindvideo.utils import UserError


def _runs(root, cfg):
    for seg in wen2018_segments(cfg):
        for r in range(1, seg.repetitions + 1):
            yield (
                seg,
                root
                / "subject1"
                / "fmri"
                / seg.name
                / "cifti"
                / f"{seg.name}_{r}_Atlas.dtseries.nii",
            )


def _packets(path):
    """The encoded video stream (demuxed, not decoded)."""
    with av.open(str(path)) as container:
        return b"".join(bytes(p) for p in container.demux(video=0) if p.size)


def _prepare(x, drop_start, drop_end=4):
    """The authors' preprocessing: drop volumes, 4th-order detrend, z-score per vertex."""
    x = x[drop_start : len(x) - drop_end].astype(np.float64)
    q, _ = np.linalg.qr(np.polynomial.legendre.legvander(np.linspace(-1, 1, len(x)), 4))
    x = x - q @ (q.T @ x)
    return (x - x.mean(0)) / x.std(0)


def test_layout_and_every_run_reads_with_nibabel(simulated_dataset, sim_config):
    root = simulated_dataset
    names = sorted(p.name for p in (root / "stimuli").iterdir())
    assert names == ["seg1.mp4", "seg2.mp4", "seg3.mp4", "seg4.mp4", "test1.mp4", "test2.mp4"]
    assert not (root / "subject2").exists()
    runs = list(_runs(root, sim_config))
    assert len(runs) == 4 * 2 + 2 * 3
    n_files = len(list((root / "subject1").rglob("*.dtseries.nii")))
    assert n_files == len(runs)
    for seg, path in runs:
        img = nib.load(path)
        series, models = img.header.get_axis(0), img.header.get_axis(1)
        assert isinstance(series, cifti2.SeriesAxis) and series.step == 2.0
        assert isinstance(models, cifti2.BrainModelAxis)
        assert img.shape == (seg.n_volumes, len(models))
        structures = {str(n) for n, _, _ in models.iter_structures()}
        assert structures == {atlas.CORTEX_LEFT, atlas.CORTEX_RIGHT}
    assert nib.load(root / "subject1/fmri/test2/cifti/test2_3_Atlas.dtseries.nii").shape[0] == 246
    assert nib.load(root / "subject1/fmri/test1/cifti/test1_1_Atlas.dtseries.nii").shape[0] == 245
    assert nib.load(root / "subject1/fmri/seg4/cifti/seg4_2_Atlas.dtseries.nii").shape[0] == 245


def test_fast_reader_agrees_with_nibabel(simulated_dataset):
    path = simulated_dataset / "subject1/fmri/test1/cifti/test1_1_Atlas.dtseries.nii"
    data, models, tr = read_dtseries(path)
    img = nib.load(path)
    np.testing.assert_array_equal(data, img.get_fdata(dtype=np.float32))
    assert tr == 2.0 and models == img.header.get_axis(1)
    assert len(cortex_indices(models)) == len(models) == 2300  # 2000 visual + 300 other


def test_stimulus_is_480_s_at_30_fps(simulated_dataset, sim_config):
    with av.open(str(simulated_dataset / "stimuli" / "test1.mp4")) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 30.0
        assert (stream.codec_context.width, stream.codec_context.height) == (32, 32)
        n = sum(1 for _ in container.decode(stream))
    assert n == 480 * 30


def test_ground_truth_and_scenes(simulated_dataset, sim_config):
    gt = np.load(simulated_dataset / "ground_truth.npz")
    g = 2300
    for key in ("responsive", "hrf_peak_s", "role", "area", "grayordinate_index"):
        assert gt[key].shape == (g,), key
    np.testing.assert_array_equal(gt["responsive"], gt["subject1/responsive"])
    assert gt["responsive"].dtype == bool and 0 < gt["responsive"].sum() < g
    assert not gt["responsive"][gt["role"] == 0].any()  # only visual areas respond
    assert list(gt["role_names"]) == ["none", "early", "motion", "class"]
    peaks = gt["hrf_peak_s"]
    assert peaks.min() >= sim_config.hrf_peak_min_s and peaks.max() <= sim_config.hrf_peak_max_s
    assert peaks.std() > 0.1  # varies by voxel
    early = gt["responsive"] & (gt["role"] == 1)
    assert np.isfinite(gt["subject1/rf_x"][early]).all()

    meta = json.loads((simulated_dataset / "scenes.json").read_text())
    assert len(meta["classes"]) >= 50 and meta["tr_s"] == 2.0
    test2 = meta["timing"]["test2"]
    assert (test2["n_volumes"], test2["drop_start"], test2["drop_end"]) == (246, 2, 4)
    assert test2["movie_onset_s"] == 4.0 and test2["repetitions"] == sim_config.test_repetitions
    for name, scenes in meta["segments"].items():
        assert scenes[0]["start_s"] == 0 and scenes[-1]["end_s"] == pytest.approx(480)
        for a, b in itertools.pairwise(scenes):
            assert a["end_s"] == b["start_s"], name
        for s in scenes:
            assert meta["classes"][s["class_id"]] == s["class"] and s["caption"] and s["motion"]


def test_signal_is_really_there(simulated_dataset, sim_config):
    """Repetition 1 vs 2 of each training segment, after the authors' preprocessing: responsive
    voxels correlate at ~0.47 on average (SNR 1), the other voxels at ~0.00."""
    gt = np.load(simulated_dataset / "ground_truth.npz")
    responsive = gt["responsive"]
    corr = []
    for k in range(1, sim_config.train_segments + 1):
        cifti = simulated_dataset / "subject1" / "fmri" / f"seg{k}" / "cifti"
        a = _prepare(read_dtseries(cifti / f"seg{k}_1_Atlas.dtseries.nii")[0], 1)
        b = _prepare(read_dtseries(cifti / f"seg{k}_2_Atlas.dtseries.nii")[0], 1)
        corr.append((a * b).mean(axis=0))
    corr = np.mean(corr, axis=0)
    assert corr[responsive].mean() > 0.35
    assert abs(corr[~responsive].mean()) < 0.03
    assert np.percentile(corr[responsive], 5) > np.percentile(corr[~responsive], 95)
    for role in (1, 2, 3):  # every kind of responsive voxel really responds
        assert corr[responsive & (gt["role"] == role)].mean() > 0.25


def test_deterministic_and_order_independent(simulated_dataset, sim_config, tmp_path):
    """Same seed → identical data, even with fewer segments (every segment and run has its own
    random stream); another seed → different data."""
    small = dataclasses.replace(sim_config, train_segments=1, test_segments=1)
    same = simulate_wen2018(small, tmp_path / "same")
    for run in (
        "subject1/fmri/seg1/cifti/seg1_2_Atlas.dtseries.nii",
        "subject1/fmri/test1/cifti/test1_3_Atlas.dtseries.nii",
    ):
        reference = read_dtseries(simulated_dataset / run)[0]
        np.testing.assert_array_equal(read_dtseries(same / run)[0], reference)
    # The container's header holds a timestamp: compare the encoded stream.
    for mp4 in ("stimuli/seg1.mp4", "stimuli/test1.mp4"):
        assert _packets(same / mp4) == _packets(simulated_dataset / mp4)

    other = simulate_wen2018(
        dataclasses.replace(small, seed=1, test_segments=0), tmp_path / "other"
    )
    run = "subject1/fmri/seg1/cifti/seg1_2_Atlas.dtseries.nii"
    different, reference = read_dtseries(other / run)[0], read_dtseries(same / run)[0]
    assert different.shape != reference.shape or not np.allclose(different, reference)
    assert _packets(other / "stimuli/seg1.mp4") != _packets(same / "stimuli/seg1.mp4")


def _preferred_agreement(a, b):
    """How often two subjects' class voxels at the same vertex prefer the same class."""
    common = np.intersect1d(a.klass, b.klass)
    pa = a.class_tuning[:, np.searchsorted(a.klass, common)].argmax(axis=0)
    pb = b.class_tuning[:, np.searchsorted(b.klass, common)].argmax(axis=0)
    return float((pa == pb).mean()), len(common)


def test_subjects_differ_as_real_ones_do(sim_config):
    """Subject 1 does not depend on how many subjects are simulated; the others have their own
    SNR, responsive voxels (so ROI and voxel count), HRF timing, and class maps related to
    subject 1's at the same vertex by subject_similarity: unrelated at 0."""
    cfg = dataclasses.replace(sim_config, subjects=3, visual_vertices=None)
    gray = atlas.grayordinate_index(simulated_axis(cfg))
    (alone,), _ = subject_brains(dataclasses.replace(cfg, subjects=1), gray, 72)
    brains, snrs = subject_brains(cfg, gray, 72)
    for name in ("responsive", "hrf_peak_s", "image_weights", "class_tuning"):
        np.testing.assert_array_equal(getattr(brains[0], name), getattr(alone, name))
    assert snrs[0] == cfg.snr and len(set(snrs)) == 3
    assert len({int(b.responsive.sum()) for b in brains}) == 3
    assert len({round(float(np.median(b.hrf_peak_s)), 3) for b in brains}) == 3

    related, n = _preferred_agreement(brains[0], brains[1])
    unrelated_brains, _ = subject_brains(dataclasses.replace(cfg, subject_similarity=0.0), gray, 72)
    unrelated, _ = _preferred_agreement(unrelated_brains[0], unrelated_brains[1])
    assert n > 500
    assert related > 0.08 > 0.03 > unrelated  # chance 1/72 = 0.014
    same, _ = _preferred_agreement(
        brains[0], subject_brains(dataclasses.replace(cfg, subject_similarity=1.0), gray, 72)[0][1]
    )
    assert same == 1.0
    with pytest.raises(UserError, match="subject_similarity must lie in"):
        simulate_wen2018(dataclasses.replace(cfg, subject_similarity=1.5), "unused")


def test_tiny_is_small(simulated_dataset):
    size = sum(p.stat().st_size for p in simulated_dataset.rglob("*") if p.is_file())
    assert size < 50e6
    assert not list(simulated_dataset.parent.glob(".*tmp")), "temporary directory left behind"


def test_refuses_a_non_empty_out(tmp_path, sim_config):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty; choose another --out or delete it"):
        simulate_wen2018(sim_config, tmp_path / "x")
    with pytest.raises(UserError, match="not empty"):
        simulate_hcp_rest(sim_config, tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_its_own_finished_dataset_is_written_again_and_no_other(
    tmp_path, simulated_dataset, sim_config
):
    """A run killed after its dataset was in place leaves a finished dataset: the same command
    writes it again (the same files); another configuration's, or the rest corpus's, is
    refused."""
    import dataclasses
    import shutil

    small = dataclasses.replace(
        sim_config, train_segments=1, test_segments=1, visual_vertices=300, other_vertices=50
    )
    out = tmp_path / "sim"
    simulate_wen2018(small, out)
    assert (out / "config.yaml").is_file()  # written inside the staged folder
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    simulate_wen2018(small, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    with pytest.raises(UserError, match="not empty"):
        simulate_wen2018(dataclasses.replace(small, seed=small.seed + 1), out)
    with pytest.raises(UserError, match="not empty"):
        simulate_hcp_rest(small, out)
    shutil.rmtree(out / "stimuli")
    (out / "config.yaml").unlink()  # a folder without its config is not a finished dataset
    with pytest.raises(UserError, match="not empty"):
        simulate_wen2018(small, out)


def test_rest_corpus_in_hcp_layout(simulated_rest, simulated_dataset, sim_config):
    rest = sim_config.rest
    subjects = sorted(p.name for p in simulated_rest.iterdir() if p.is_dir())
    assert len(subjects) == rest.subjects and all(len(s) == 6 and s.isdigit() for s in subjects)
    wen_models = nib.load(
        simulated_dataset / "subject1/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii"
    ).header.get_axis(1)
    for run in rest.runs:
        path = simulated_rest / subjects[0] / f"MNINonLinear/Results/rfMRI_{run}"
        path = path / f"rfMRI_{run}_Atlas.dtseries.nii"
        img = nib.load(path)
        assert img.shape == (rest.volumes, len(wen_models))
        assert img.header.get_axis(0).step == pytest.approx(rest.tr_s)
        assert img.header.get_axis(1) == wen_models
    # Spontaneous activity is shared within a Yeo-17 network.
    data = _prepare(read_dtseries(path)[0], 0, 0)
    net = np.load(simulated_rest / "ground_truth.npz")["yeo17"]
    c = np.corrcoef(data.T)
    a, b = net == 1, net == 7
    assert c[np.ix_(a, a)].mean() > c[np.ix_(a, b)].mean() + 0.2


def test_rest_is_deterministic(simulated_rest, sim_config, tmp_path):
    again = simulate_hcp_rest(sim_config, tmp_path / "again")
    files = sorted(p.relative_to(simulated_rest) for p in simulated_rest.rglob("*.nii"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.nii"))
    for rel in files:
        assert (simulated_rest / rel).read_bytes() == (again / rel).read_bytes(), rel
    a, b = np.load(simulated_rest / "ground_truth.npz"), np.load(again / "ground_truth.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def _digests(root):
    """Every file of a dataset but its config, the mp4s by their encoded stream (the container
    header holds a timestamp)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "config.yaml":
            data = _packets(path) if path.suffix == ".mp4" else path.read_bytes()
            out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def test_stimuli_rendered_by_several_processes_give_the_same_dataset(sim_config, tmp_path):
    small = dataclasses.replace(sim_config, train_segments=1, test_segments=1)
    one = _digests(simulate_wen2018(small, tmp_path / "one", workers=1))
    assert len(one) == 2 + 2 + 3 + 2  # 2 mp4s, 5 runs, scenes.json, ground_truth.npz
    assert _digests(simulate_wen2018(small, tmp_path / "two", workers=2)) == one
    assert multiprocessing.active_children() == []


def test_a_render_process_that_fails_raises_its_error_here(sim_config, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    segments = wen2018_segments(sim_config)[:3]
    with pytest.raises(FileExistsError, match=str(not_a_folder)):
        list(_stimuli(sim_config, segments, not_a_folder, workers=2))
    assert multiprocessing.active_children() == []


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from every ``/proc/N/stat``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_while_processes_render_none_is_left_running(sig, tmp_path):
    """Ctrl-C: one line, status 130, the render processes stopped, nothing written; kill -9:
    the render processes die with the command (they would go on writing otherwise)."""
    out = tmp_path / "sim"
    command = ["simulate", "--preset", "tiny", "--threads", "2", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mindvideo", "-q", *command, "visual_vertices=400"],
        env={**os.environ, "TQDM_DISABLE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    renderers: list[int] = []
    while proc.poll() is None and time.monotonic() < deadline:
        renderers = [c for c in _children(proc.pid) if "spawn" in _cmdline(c)]
        if len(renderers) == 2:
            break
        time.sleep(0.01)
    assert len(renderers) == 2, proc.stderr.read()
    time.sleep(0.5)
    proc.send_signal(sig)
    code, err = proc.wait(), proc.stderr.read()
    deadline = time.monotonic() + 10
    while any(map(_alive, renderers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, renderers))
    if sig == signal.SIGINT:
        assert (code, err.strip()) == (130, "mindvideo simulate: interrupted")
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
