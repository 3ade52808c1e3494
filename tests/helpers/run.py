"""Tiny run directories for the evaluate / compare / explain / report tests (seconds on a CPU).

Layout (docs/report.md): ``RUN/prepare`` (a prepared subject: 60 voxels on V1–V4 grayordinates,
2 test segments × 3 TRs of 32 × 32 frames showing a moving square), ``RUN/pretrain/mbm`` (a tiny
MBM for 64 padded voxels), ``RUN/contrast/fmri_encoder`` (its spatiotemporal inflation),
``RUN/cotrain/pipeline`` (the tiny MindVideoPipeline of :mod:`helpers.pipeline`, 16 × 16
frames). The classifiers are tiny ViT / VideoMAE models marked as simulator stand-ins.
:func:`write_reconstruction` writes a reconstruct folder alone, from given clips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

N_VOXELS = 60  # padded to the tiny encoder's 64
TEST_SEGMENTS, N_TRS, FRAMES, SIZE = 2, 3, 6, 32


def scene_frames(segments: int, trs: int, seed: int) -> np.ndarray:
    """uint8 ``[S, T, 6, 32, 32, 3]``: a coloured background per segment, a moving white square."""
    rng = np.random.default_rng(seed)
    out = np.empty((segments, trs, FRAMES, SIZE, SIZE, 3), np.uint8)
    for s in range(segments):
        colour = rng.integers(40, 200, 3)
        for t in range(trs):
            for k in range(FRAMES):
                frame = np.broadcast_to(colour, (SIZE, SIZE, 3)).copy()
                x = (4 * (t * FRAMES + k)) % (SIZE - 8)
                frame[12:20, x : x + 8] = 255
                out[s, t, k] = frame
    return out


def write_prepared(root: Path, grayordinates: bool = True, seed: int = 0) -> Path:
    """A prepared subject (the format of ``mindvideo prepare``)."""
    from mindvideo.data import atlas
    from mindvideo.data.prepared import PreparedWriter

    rng = np.random.default_rng(seed)
    w = PreparedWriter(root)
    w.write_array("fmri_train", rng.normal(size=(2, 4, N_VOXELS)).astype(np.float32))
    w.write_array("fmri_test", rng.normal(size=(TEST_SEGMENTS, N_TRS, N_VOXELS)).astype(np.float32))
    w.write_array("frames_train", scene_frames(2, 4, seed + 1))
    w.write_array("frames_test", scene_frames(TEST_SEGMENTS, N_TRS, seed + 2))
    w.write_array("scene_ids_train", np.repeat(np.arange(2), 4 * FRAMES).reshape(2, 4, FRAMES))
    w.write_array(
        "scene_ids_test",
        np.repeat(np.arange(TEST_SEGMENTS), N_TRS * FRAMES).reshape(TEST_SEGMENTS, N_TRS, FRAMES),
    )
    if grayordinates:
        visual = np.flatnonzero(atlas.area_mask(["V1", "V2", "V3", "V4"]))
        pick = visual[np.linspace(0, len(visual) - 1, N_VOXELS).round().astype(int)]
        w.write_array("voxel_grayordinates", pick.astype(np.int32))
    w.finish()
    return root


def save_encoders(run: Path) -> dict[str, Path]:
    """The MBM, contrast and cotrain outputs a run directory holds (tiny, fixed seeds)."""
    from helpers.pipeline import tiny_pipeline
    from mindvideo.encoder import SpatiotemporalEncoder, mbm_tiny

    torch.manual_seed(0)
    mbm = mbm_tiny(64)
    mbm.save_pretrained(run / "pretrain" / "mbm")
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=32, max_window=4)
    encoder.save_pretrained(run / "contrast" / "fmri_encoder")
    tiny_pipeline(seed=0).save_pretrained(run / "cotrain" / "pipeline")
    return {"mbm": run / "pretrain", "contrast": run / "contrast", "cotrain": run / "cotrain"}


def save_classifiers(root: Path) -> dict[str, Path]:
    """Tiny ViT (10 classes) and VideoMAE (12 classes, 6 frames), marked as stand-ins."""
    from transformers import (
        VideoMAEConfig,
        VideoMAEForVideoClassification,
        VideoMAEImageProcessorPil,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessorPil,
    )

    torch.manual_seed(0)
    marker = {"trained_on": "the simulated dataset's labels"}
    vit = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        mindvideo_standin=marker,
    )
    ViTForImageClassification(vit).save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    mae = VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_frames=FRAMES,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=12,
        mindvideo_standin=marker,
    )
    VideoMAEForVideoClassification(mae).save_pretrained(root / "videomae")
    VideoMAEImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "videomae")
    return {"image": root / "vit", "video": root / "videomae"}


def reconstruct_overrides(run: Path, seed: int = 0) -> list[str]:
    """``key=value`` settings of a quick reconstruction: 2 DDIM steps, the first 4 windows."""
    return [
        f"checkpoint={run / 'cotrain' / 'pipeline'}",
        f"data={run / 'prepare'}",
        "num_inference_steps=2",
        "limit=4",
        "batch_size=2",
        f"seed={seed}",
    ]


def evaluate_overrides(classifiers: dict[str, Path]) -> list[str]:
    """Tiny classifiers have 10 / 12 classes: 2- and 5-way tests, 20 trials, fast bootstrap,
    the flow at the clips' size."""
    return [
        f"pretrained.image_classifier={classifiers['image']}",
        f"pretrained.video_classifier={classifiers['video']}",
        "n_ways=[2,5]",
        "trials=20",
        "bootstrap=500",
        "device=cpu",
        "flow_size=null",  # the clips' own size: no 512 x 512 flow in the tests
    ]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_reconstruction(folder: Path, pred: np.ndarray, gt: np.ndarray, complete=True) -> Path:
    """A folder in the documented layout of ``mindvideo reconstruct`` (docs/pipeline.md): clips
    ``pred`` and ``gt`` uint8 ``[N, F, H, W, 3]``, window ``i`` is segment ``i // 3``, TR ``i % 3``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = pred.shape[0]
    windows = [
        {
            "row": i,
            "segment": i // 3,
            "tr": i % 3,
            "frames": f"clips/seg{i // 3:02d}_tr{i % 3:03d}.npy",
        }
        for i in range(n)
    ]
    index = {
        "format_version": 1,
        "split": "test",
        "settings": {"data": "/data/prepared", "seed": 0},
        "num_frames": pred.shape[1],
        "height": pred.shape[2],
        "width": pred.shape[3],
        "fps": 3,
        "complete": complete,
        "windows": windows,
    }
    (folder / "index.json").write_text(json.dumps(index))
    np.save(folder / "reconstructions.npy", pred)
    np.save(folder / "ground_truth.npy", gt)
    return folder


def random_clips(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Random uint8 clips ``[n, 6, size, size, 3]``."""
    return np.random.default_rng(seed).integers(0, 256, (n, FRAMES, size, size, 3), dtype=np.uint8)
