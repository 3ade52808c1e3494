"""Stage 2, ``mindvideo pretrain``: masked brain modeling on unlabeled fMRI (paper 3.3, B).

Two phases, each optional, run one after the other on the training engine
(:class:`~mindvideo.training.engine.Trainer`):

1. **pre-training** on a large unlabeled corpus (``data``: the HCP visual-cortex corpus written by
   ``mindvideo prepare --dataset hcp``; a prepared subject's training fMRI also works) with the
   ``train`` settings (paper Table B.1);
2. **fine-tuning** on the target subject's *training* fMRI only (``finetune_data``, read through
   :class:`~mindvideo.data.datasets.FMRIFramesDataset`, which cannot read test fMRI) with the
   ``finetune`` settings ("a small learning rate and epochs").

Both minimise the masked MSE of :class:`~mindvideo.encoder.MBMAutoencoder` (75 % of the patches
masked). The corpus and the target have different voxel counts (HCP V1–V4 vs. the subject's ROI);
between the phases the model is resized to the target's V with :func:`resize_mbm`, which keeps
every weight: the patch embedding and the decoder's prediction act on one patch at a time and the
position embeddings are fixed sin-cos functions of the patch index, recomputed for the new length.

Outputs of ``pretrain(cfg, out)``::

    OUT/config.yaml          the resolved PretrainConfig
    OUT/pretrain/            phase 1: checkpoints/step_N, logs/metrics.jsonl
    OUT/pretrain/mbm/        phase 1's MBM (only when a fine-tuning phase follows)
    OUT/finetune/            phase 2: checkpoints/step_N, logs/metrics.jsonl
    OUT/mbm/                 the final MBM: config.json + diffusion_pytorch_model.safetensors
    OUT/heldout.json         masked MSE on the target's test fMRI before/after fine-tuning (a
                             report only: never a gradient from test fMRI)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mindvideo.config import PretrainConfig, TrainConfig, save_config
from mindvideo.encoder import MBMAutoencoder
from mindvideo.training.checkpoints import CHECKPOINTS_DIR, list_checkpoints
from mindvideo.training.common import (
    is_main_process,
    load_mbm,
    mbm_from_size_config,
    save_model_atomically,
)
from mindvideo.training.engine import Trainer
from mindvideo.utils import UserError, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "HeldOutMaskedLoss",
    "PretrainResult",
    "check_pretrain_config",
    "heldout_test_fmri",
    "mbm_loss",
    "open_corpus",
    "pretrain",
    "resize_mbm",
]

MBM_DIR = "mbm"
"""The final MBM folder inside the output directory (what ``mindvideo contrast`` reads)."""
PHASES = ("pretrain", "finetune")
"""Phase names; each phase trains in the sub-folder of that name."""
HELDOUT_FILE = "heldout.json"
HELDOUT_MAX_FRAMES = 2048
"""At most this many test fMRI frames (evenly spaced) in the held-out evaluation."""


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def resize_mbm(mbm: MBMAutoencoder, num_voxels: int) -> MBMAutoencoder:
    """The same MBM for fMRI of ``num_voxels`` voxels per TR (MinD-Vis: HCP → target ROI).

    Every trained weight carries over unchanged: the patch embedding (a linear map of one patch
    of ``p`` voxels), the CLS and mask tokens, all encoder and decoder blocks and norms, and the
    decoder's per-patch prediction have no dependence on the number of patches ``L = V / p``.
    The fixed sin-cos position embeddings (non-persistent buffers) are recomputed for the new
    ``L``. Returns ``mbm`` itself when the count is unchanged, else a new model on ``mbm``'s
    device and dtype, in ``mbm``'s train/eval mode.

    Args:
        mbm: the trained autoencoder (``num_voxels`` ``V_old`` in its config).
        num_voxels: ``V_new``, a multiple of the patch size (pad the data first).
    """
    old = int(mbm.config.num_voxels)
    if int(num_voxels) == old:
        return mbm
    config = {k: v for k, v in dict(mbm.config).items() if not k.startswith("_")}
    config["num_voxels"] = int(num_voxels)
    resized = MBMAutoencoder(**config)  # checks V_new against the patch size
    # strict: a parameter that depended on V would fail loudly here instead of being dropped
    resized.load_state_dict(mbm.state_dict(), strict=True)
    resized.to(mbm.device)
    if resized.dtype != mbm.dtype:
        resized.to(mbm.dtype)
    resized.train(mbm.training)
    logger.info(
        "Resized the MBM from %d to %d voxels (%d → %d patches); all weights kept.",
        old,
        num_voxels,
        old // mbm.config.patch_size,
        num_voxels // mbm.config.patch_size,
    )
    return resized


def mbm_loss(mask_ratio: float):
    """The engine's loss function for MBM: ``loss_fn(model, fmri [N, V]) -> (masked MSE, logs)``.

    Masks are drawn from the global torch RNG, which checkpoints restore (exact resume).
    """

    def loss_fn(model: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss, _, _ = model(batch, mask_ratio=mask_ratio)
        return loss, {}

    return loss_fn


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _is_prepared_subject(path: Path) -> bool:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return "fmri_train" in data.get("arrays", {})


def open_corpus(path: str | os.PathLike, patch_size: int, pad_mode: str = "zero") -> Dataset:
    """The pre-training data at ``path``: a dataset of single fMRI frames ``[V_padded]``.

    ``path`` is the HCP corpus written by ``mindvideo prepare --dataset hcp``
    (:class:`mindvideo.data.hcp.HCPCorpus`) or a prepared subject, of which only the training
    fMRI is read (:class:`~mindvideo.data.datasets.FMRIFramesDataset`).
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"Pre-training data {path} does not exist; pass the folder written by "
            "`mindvideo prepare --dataset hcp` (config key data, flag --data)."
        )
    if _is_prepared_subject(path):
        from mindvideo.data.datasets import FMRIFramesDataset

        mode: Any = pad_mode
        return FMRIFramesDataset(path, patch_size=patch_size, pad_mode=mode)
    try:
        from mindvideo.data.hcp import HCPCorpus
    except ImportError as exc:  # pragma: no cover - the HCP reader ships with the data package
        raise UserError(
            f"{path} is not a prepared subject and this mindvideo cannot read HCP corpora."
        ) from exc
    return HCPCorpus(path, patch_size=patch_size, pad_mode=pad_mode)


def _phase_dataset(
    name: str, data: str, patch_size: int, pad_mode: str, pooled: Any = None
) -> Dataset:
    """The frames one phase trains on: the fine-tuning phase reads a prepared subject's training
    fMRI only (``pooled``: a shared model's subjects, :func:`shared_finetune_data`);
    pre-training reads any corpus :func:`open_corpus` opens."""
    if name == "finetune":
        from mindvideo.data.datasets import FMRIFramesDataset

        mode: Any = pad_mode
        source = data if pooled is None else pooled
        return FMRIFramesDataset(source, patch_size=patch_size, pad_mode=mode)
    return open_corpus(data, patch_size, pad_mode)


def shared_finetune_data(cfg: PretrainConfig, fit: bool = True) -> Any:
    """With ``finetune_subjects``: the subjects and their pooled training fMRI
    (:func:`mindvideo.training.shared.open_subjects`; ``fit=False``: unfitted adapters, for a
    dry run); else ``None``."""
    if not cfg.finetune_subjects:
        return None
    if not cfg.finetune_data:
        raise UserError(
            "finetune_subjects are the further subjects of a shared model: set finetune_data "
            "too (--finetune-data S1 S2 ...)."
        )
    from mindvideo.training.shared import open_subjects

    return open_subjects(cfg.finetune_data, cfg.finetune_subjects, fit=fit)


def _num_voxels(dataset: Dataset, where: str) -> int:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise UserError(f"The fMRI data {where} holds no frames; prepare it again.")
    first = dataset[0]
    return int(first.shape[-1])


def heldout_test_fmri(
    prepared: str | os.PathLike,
    patch_size: int,
    pad_mode: str = "zero",
    max_frames: int = HELDOUT_MAX_FRAMES,
) -> torch.Tensor:
    """The target's *test* fMRI frames for a held-out report: float32 ``[N, V_padded]``.

    Normalised with statistics of the training fMRI (as every dataset does), test repetitions
    averaged, at most ``max_frames`` frames evenly spaced over all test TRs. Only for evaluation
    under ``torch.no_grad``: fine-tuning never sees test fMRI.
    """
    from mindvideo.data.datasets import FMRINormalizer
    from mindvideo.data.pairing import pad_voxels
    from mindvideo.data.prepared import PreparedData

    data = PreparedData.open(prepared)
    normalizer = FMRINormalizer("train").fit(data.fmri_train)
    test = data.fmri_test
    n_segments, n_trs = test.shape[0], test.shape[-2]
    flat = np.arange(n_segments * n_trs)
    if len(flat) > max_frames:
        flat = flat[np.linspace(0, len(flat) - 1, max_frames).round().astype(int)]
    rows = []
    for i in flat:
        seg, t = divmod(int(i), n_trs)
        x = np.asarray(test[seg][..., t, :], dtype=np.float64)
        rows.append(x.mean(axis=0) if x.ndim == 2 else x)  # [R, V] → [V]
    frames = normalizer.transform(np.stack(rows))  # [N, V]
    return torch.from_numpy(pad_voxels(frames, patch_size, pad_mode))  # type: ignore[arg-type]


class HeldOutMaskedLoss:
    """Masked MSE of an MBM on fixed frames with fixed masks (a report; no gradient).

    Args:
        fmri: ``[N, V]`` frames (e.g. :func:`heldout_test_fmri`).
        mask_ratio: fraction of patches masked (as in training).
        seed: seeds the masks, so every call masks the same patches.
        batch_size: frames per forward pass.
    """

    def __init__(
        self, fmri: torch.Tensor, mask_ratio: float, seed: int = 0, batch_size: int = 256
    ) -> None:
        self.fmri = fmri
        self.mask_ratio = mask_ratio
        self.seed = seed
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, model: MBMAutoencoder) -> dict[str, float]:
        """Returns ``masked_mse`` (the model) and ``masked_mse_zero`` (predicting 0, the mean)."""
        was_training = model.training
        model.eval()
        device = model.device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        total = zero = 0.0
        count = 0
        for start in range(0, len(self.fmri), self.batch_size):
            x = self.fmri[start : start + self.batch_size].to(device=device, dtype=model.dtype)
            _, pred, mask = model(x, mask_ratio=self.mask_ratio, generator=generator)
            target = model.patchify(x)  # [n, L, p]
            m = mask.float()
            total += float((((pred.float() - target.float()) ** 2).mean(-1) * m).sum())
            zero += float(((target.float() ** 2).mean(-1) * m).sum())
            count += float(m.sum())
        model.train(was_training)
        count = max(count, 1.0)
        return {"masked_mse": total / count, "masked_mse_zero": zero / count}


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    """What :func:`pretrain` did: the final MBM folder, the phases trained, held-out losses."""

    mbm_dir: Path
    phases: list[str] = field(default_factory=list)
    heldout: dict[str, Any] | None = None


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """Raise a :class:`UserError` naming the key for settings the stage cannot run with."""
    if not cfg.data and not cfg.finetune_data:
        raise UserError(
            "Nothing to train: set data (the HCP corpus, flag --data) and/or finetune_data (a "
            "prepared subject, flag --finetune-data)."
        )
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise UserError(
            f"Config key 'mask_ratio' must lie in [0, 1), not {cfg.mask_ratio}; the paper "
            "uses 0.75."
        )
    if cfg.pad_mode not in ("zero", "wrap_compat"):
        raise UserError(
            f"Config key 'pad_mode' is {cfg.pad_mode!r}; choose 'zero' or 'wrap_compat'."
        )


def _phase_of_checkpoint(resume: str | os.PathLike, out: Path) -> str:
    path = Path(resume).resolve()
    for name in PHASES:
        if path.parent == (out / name / CHECKPOINTS_DIR).resolve():
            return name
    raise UserError(
        f"{resume} is not a checkpoint of this run; pass --resume latest or a folder "
        f"{out}/{{{','.join(PHASES)}}}/{CHECKPOINTS_DIR}/step_N."
    )


def _train_phase(
    cfg: PretrainConfig,
    name: str,
    data: str,
    train_cfg: TrainConfig,
    model: MBMAutoencoder | None,
    phase_out: Path,
    target: Path,
    resume: str | os.PathLike | None,
    result: PretrainResult,
    pooled: Any = None,
) -> MBMAutoencoder:
    """Train one phase on the engine; the trained MBM is saved to ``target``."""
    patch_size = model.config.patch_size if model is not None else cfg.encoder.patch_size
    dataset = _phase_dataset(name, data, patch_size, cfg.pad_mode, pooled)
    num_voxels = _num_voxels(dataset, data)
    if model is None:
        torch.manual_seed(train_cfg.seed)  # a reproducible initialisation
        model = mbm_from_size_config(cfg.encoder, num_voxels)
    else:
        model = resize_mbm(model, num_voxels)
    logger.info(
        "MBM %s on %s: %d frames of %d voxels (%d patches of %d), %.2f M parameters.",
        name,
        data,
        len(dataset),  # type: ignore[arg-type]
        num_voxels,
        num_voxels // patch_size,
        patch_size,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )

    eval_fn = None
    last_eval: dict[str, float] = {}
    if name == "finetune":
        heldout = HeldOutMaskedLoss(
            heldout_test_fmri(data, patch_size, cfg.pad_mode), cfg.mask_ratio, train_cfg.seed
        )
        before = heldout(model)
        result.heldout = {
            "split": "test",
            "frames": len(heldout.fmri),
            "mask_ratio": cfg.mask_ratio,
            "masked_mse_before": before["masked_mse"],
            "masked_mse_zero": before["masked_mse_zero"],
        }

        def eval_fn(m: torch.nn.Module, step: int) -> dict[str, float]:
            last_eval.update(heldout(m), step=step)  # type: ignore[arg-type]
            return {"heldout_masked_mse": last_eval["masked_mse"]}

    def held_out_after(m: torch.nn.Module) -> None:
        if last_eval.get("step") != train_cfg.max_steps:  # resumed at the end: no eval ran
            last_eval.update(heldout(m))  # type: ignore[arg-type]
        result.heldout["masked_mse_after"] = last_eval["masked_mse"]  # type: ignore[index]

    def save_fn(m: torch.nn.Module, _out: Path) -> None:
        if result.heldout is not None and name == "finetune":
            # The report first: the MBM's folder marks the stage finished, so an interrupt
            # between the two cannot leave a finished-looking run without its report.
            held_out_after(m)
            path = phase_out.parent / HELDOUT_FILE
            atomic_write_text(path, json.dumps(result.heldout, indent=2) + "\n")
        save_model_atomically(m, target)
        logger.info("Saved the MBM to %s.", target)

    trainer = Trainer(
        model,
        dataset,
        mbm_loss(cfg.mask_ratio),
        train_cfg,
        phase_out,
        eval_fn=eval_fn,
        save_fn=save_fn,
        project_name=f"{phase_out.parent.resolve().name}-{name}",
    )
    model = trainer.train(resume=resume)  # type: ignore[assignment]
    if (
        result.heldout is not None
        and name == "finetune"
        and "masked_mse_after" not in result.heldout
    ):
        held_out_after(model)  # the other processes (the main one wrote the report)
    return model


def pretrain(
    cfg: PretrainConfig, out: str | os.PathLike, resume: str | os.PathLike | None = None
) -> PretrainResult:
    """Run masked brain modeling: phase 1 on ``cfg.data``, phase 2 on ``cfg.finetune_data``.

    ``resume``: ``None`` (a fresh run; an error if a phase folder holds checkpoints),
    ``"latest"`` (skip finished phases, continue the current one from its newest checkpoint),
    or a ``OUT/{pretrain,finetune}/checkpoints/step_N`` folder. Returns a
    :class:`PretrainResult`; writes the layout in the module docstring.
    """
    check_pretrain_config(cfg)
    out = Path(out)

    phases: list[tuple[str, str, TrainConfig]] = []
    if cfg.data:
        phases.append(("pretrain", cfg.data, cfg.train))
    if cfg.finetune_data:
        phases.append(("finetune", cfg.finetune_data, cfg.finetune))
    names = [name for name, _, _ in phases]
    # which phase continues from which checkpoint; earlier phases must have finished
    resume_at: dict[str, str | os.PathLike | None] = dict.fromkeys(names)
    if resume is not None and str(resume) == "latest":
        resume_at = dict.fromkeys(names, "latest")
    elif resume is not None:
        phase = _phase_of_checkpoint(resume, out)
        if phase not in names:
            raise UserError(
                f"{resume} is a checkpoint of the {phase} phase, which this configuration does "
                "not run; resume with the configuration of that run."
            )
        resume_at[phase] = resume

    model: MBMAutoencoder | None = load_mbm(cfg.init, "init") if cfg.init else None
    # Every input is checked before anything is written (a typo in finetune_data must not
    # surface only after days of phase 1), and a refused run leaves no output folder.
    patch_size = model.config.patch_size if model is not None else cfg.encoder.patch_size
    shared = shared_finetune_data(cfg)
    pooled = None if shared is None else shared.pooled
    for i, (name, data, _) in enumerate(phases):
        finished = i < len(phases) - 1 and (out / name / MBM_DIR / "config.json").is_file()
        if resume is None or not finished:  # a resumed run needs no data of finished phases
            _num_voxels(_phase_dataset(name, data, patch_size, cfg.pad_mode, pooled), data)
        if resume is None and list_checkpoints(out / name):
            raise UserError(
                f"{out / name / CHECKPOINTS_DIR} already holds checkpoints of an earlier run; "
                "pass --resume latest to continue it, or use a new output directory."
            )
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        if shared is not None:  # the adapters, for contrast (--data S1 S2 ...)
            from mindvideo.pipeline.shared import save_subjects

            save_subjects(shared.subjects, out)

    result = PretrainResult(mbm_dir=out / MBM_DIR)
    for i, (name, data, train_cfg) in enumerate(phases):
        last = i == len(phases) - 1
        phase_out = out / name
        target = out / MBM_DIR if last else phase_out / MBM_DIR
        resuming_later = any(resume_at[n] is not None for n in names[i + 1 :])
        if not last and resuming_later and resume_at[name] in (None, "latest"):
            if (target / "config.json").is_file():
                logger.info("Phase %s is complete (%s); continuing with the next.", name, target)
                model = MBMAutoencoder.from_pretrained(target)
                continue
            if resume_at[name] is None:
                raise UserError(
                    f"Cannot resume the {names[i + 1]} phase: the {name} phase has not finished "
                    f"({target} is missing); resume with --resume latest."
                )
        model = _train_phase(
            cfg, name, data, train_cfg, model, phase_out, target, resume_at[name], result, pooled
        )
        result.phases.append(name)
    return result
