"""Dry runs of the training stages (``mindvideo STAGE --dry-run``): check, count, estimate.

Each ``plan_*`` function takes the stage's resolved config (and the ``out`` / ``resume`` the run
would get), makes the checks the real run makes with the stage's own check and load functions —
the data folders are opened and validated, the pretrained folders must hold their parts, voxel
counts and sizes must agree — but builds every model from its config on the meta device
(``empty_weights=True``), so a paper-size recipe plans in seconds on a laptop. It returns a
:class:`~mindvideo.utils.dry_run.RunPlan`: the data shapes, the schedule and global batch, every
model with its total and trainable parameters (the trainable ones are exactly those the engine
would optimise) and a memory estimate (:mod:`mindvideo.utils.dry_run`). Nothing is trained and
nothing is written; ``out`` is only looked at.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from mindvideo.config import (
    ContrastConfig,
    CotrainConfig,
    PretrainConfig,
    TrainConfig,
    TuneVideoConfig,
)
from mindvideo.utils import UserError
from mindvideo.utils.dry_run import (
    Batching,
    ModelPart,
    PhasePlan,
    RunPlan,
    activation_bytes,
    empty_weights,
    meta_like,
    out_status,
    planned_processes,
    trace_activations,
    training_memory,
)

__all__ = [
    "check_training_for_plan",
    "plan_contrast",
    "plan_cotrain",
    "plan_pretrain",
    "plan_tune_video",
    "training_phase_plan",
]

logger = logging.getLogger(__name__)

Resume = str | os.PathLike | None


# --------------------------------------------------------------------------------------------
# Shared by the stages
# --------------------------------------------------------------------------------------------


def check_training_for_plan(train: TrainConfig, key: str = "train") -> list[str]:
    """The training engine's checks of ``train`` (the config's ``key`` section); returns notes.

    ``fp16`` on a machine without a CUDA GPU is a note, not an error: a dry run on a laptop
    plans a run on a GPU machine (the real run here stops with the engine's error).
    """
    from mindvideo.training.engine import check_engine_config

    notes = []
    if train.mixed_precision == "fp16" and (train.cpu or not torch.cuda.is_available()):
        needs = f"a CUDA GPU{f' and {key}.cpu=false' if train.cpu else ''}"
        notes.append(
            f"{key}.mixed_precision is fp16, which needs {needs}: on this machine the real run "
            "would stop with an error (bf16 also runs on CPUs)."
        )
        train = dataclasses.replace(train, mixed_precision="bf16")
    check_engine_config(train)
    return notes


def training_phase_plan(
    name: str,
    train: TrainConfig,
    data: dict[str, Any],
    models: Iterable[ModelPart],
    samples: int,
    forward: Callable[[], Any] | None = None,
    model: torch.nn.Module | None = None,
    batches_per_epoch: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> PhasePlan:
    """A :class:`~mindvideo.utils.dry_run.PhasePlan` for one run of the training engine.

    Args:
        samples: training samples per epoch.
        forward: computes the loss of one meta batch of ``train.batch_size``; traced for the
            activation estimate (``None``: no estimate).
        model: the module the engine would train; with ``train.gradient_checkpointing`` it is
            switched on as the engine does (an error if the model cannot).
        batches_per_epoch: full batches per epoch (default ``samples // batch_size``); fewer
            than one per process is the engine's error.
    """
    from mindvideo.training.engine import _enable_gradient_checkpointing

    models = list(models)
    batching = Batching(train.batch_size, planned_processes(), train.gradient_accumulation_steps)
    batches = samples // train.batch_size if batches_per_epoch is None else batches_per_epoch
    if batches // batching.processes < 1:
        raise UserError(
            f"The training set has {samples} samples, fewer than one batch on each of "
            f"{batching.processes} process(es) (batch_size {train.batch_size}); lower batch_size."
        )
    if model is not None and train.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    checkpointing = any(
        getattr(m, "gradient_checkpointing", False)
        for m in (model.modules() if model is not None else ())
    )
    traced = None
    if forward is not None:
        if model is not None:
            model.train()
        try:
            traced = trace_activations(forward)
        except Exception as exc:  # an estimate must never stop a dry run
            logger.warning("Could not trace the activations of %s (%s).", name, exc)
    how = f"kept for the backward pass of one batch of {train.batch_size}, traced"
    if checkpointing:
        how += " with gradient checkpointing"
    if train.mixed_precision != "no":
        how += f", halved for {train.mixed_precision}"
    memory = training_memory(models, activation_bytes(traced, train.mixed_precision), how)
    return PhasePlan(
        name,
        data,
        models,
        memory,
        steps=train.max_steps,
        batching=batching,
        mixed_precision=train.mixed_precision,
        samples=samples,
        settings=dict(settings or {}),
    )


def _loss(loss_fn: Callable, model: torch.nn.Module, batch: Any) -> Any:
    return loss_fn(model, batch)[0]


def _meta_batch(item: Any, batch_size: int) -> Any:
    """A meta batch of ``batch_size`` items shaped like ``item`` (a tensor or a dict of them)."""
    if isinstance(item, Mapping):
        return {k: _meta_batch(v, batch_size) for k, v in item.items() if torch.is_tensor(v)}
    return meta_like((batch_size, *item.shape), item.dtype)


def _check_fresh(out: Path | None, resume: Resume) -> None:
    from mindvideo.training.tune_video import check_fresh_output

    if out is not None:
        check_fresh_output(out, resume)


# --------------------------------------------------------------------------------------------
# Stage 2: pretrain
# --------------------------------------------------------------------------------------------


def plan_pretrain(
    cfg: PretrainConfig, out: str | os.PathLike | None = None, resume: Resume = None
) -> RunPlan:
    """A dry run of :func:`mindvideo.training.pretrain.pretrain`: one phase per corpus."""
    from mindvideo.encoder.mbm import num_masked
    from mindvideo.training.common import load_mbm, mbm_from_size_config
    from mindvideo.training.pretrain import (
        MBM_DIR,
        _num_voxels,
        _phase_dataset,
        _phase_of_checkpoint,
        check_pretrain_config,
        mbm_loss,
        resize_mbm,
        shared_finetune_data,
    )

    check_pretrain_config(cfg)
    out_path = Path(out) if out is not None else None
    phases = [
        (name, data, train, key)
        for name, data, train, key in (
            ("pretrain", cfg.data, cfg.train, "train"),
            ("finetune", cfg.finetune_data, cfg.finetune, "finetune"),
        )
        if data
    ]
    notes = [note for _, _, train, key in phases for note in check_training_for_plan(train, key)]
    if out_path is not None and resume is not None and str(resume) != "latest":
        _phase_of_checkpoint(resume, out_path)
    checked: dict[str, str] = {}
    model = load_mbm(cfg.init, "init", empty_weights=True) if cfg.init else None
    if cfg.init:
        checked["init"] = f"{cfg.init}: MBM folder ({model.config.num_voxels:,} voxels)"
    patch_size = int(model.config.patch_size) if model is not None else cfg.encoder.patch_size
    shared = shared_finetune_data(cfg, fit=False)
    checked |= _subjects_line(
        shared,
        "adapters fitted before fine-tuning (ridge on every training segment), saved "
        "in OUT/subjects/",
    )

    plans = []
    for i, (name, data, train, _) in enumerate(phases):
        finished = (
            out_path is not None
            and i < len(phases) - 1
            and (out_path / name / MBM_DIR / "config.json").is_file()
        )
        if resume is not None and finished:  # the real run skips it too, taking its MBM
            target = out_path / name / MBM_DIR  # type: ignore[operator]
            notes.append(f"The {name} phase has finished ({target}); the next one starts there.")
            model = load_mbm(target, "init", empty_weights=True)
            continue
        pooled = None if shared is None or name != "finetune" else shared.pooled
        dataset = _phase_dataset(name, data, patch_size, cfg.pad_mode, pooled)
        padded = _num_voxels(dataset, data)
        voxels = getattr(dataset, "n_voxels", None) or dataset.prepared.n_voxels
        if out_path is not None and resume is None:  # the engine's check of a fresh run
            _check_fresh(out_path / name, None)
        with empty_weights():
            if model is None:
                model = mbm_from_size_config(cfg.encoder, padded)
            else:
                model = resize_mbm(model, padded)
        kind = "HCP corpus" if name == "pretrain" and hasattr(dataset, "shards") else None
        kind = kind or "prepared subject, training fMRI only"
        checked["data" if name == "pretrain" else "finetune_data"] = f"{data}: {kind}"
        is_decoder = {
            n: n.startswith(("decoder_", "mask_token")) for n, _ in model.named_parameters()
        }
        encoder = [p for n, p in model.named_parameters() if not is_decoder[n]]
        decoder = [p for n, p in model.named_parameters() if is_decoder[n]]
        patches = padded // int(model.config.patch_size)
        batch = meta_like((train.batch_size, padded))
        plans.append(
            training_phase_plan(
                name,
                train,
                data={
                    "fMRI frames": len(dataset),  # type: ignore[arg-type]
                    "voxels": (
                        f"{voxels:,}, padded to {padded:,} = {patches} patches of "
                        f"{model.config.patch_size}"
                    ),
                    "masked": f"{num_masked(patches, cfg.mask_ratio)} of {patches} patches "
                    f"(mask_ratio {cfg.mask_ratio:g})",
                },
                models=[
                    ModelPart.of("mbm encoder", encoder),
                    ModelPart.of("mbm decoder", decoder),
                ],
                samples=len(dataset),  # type: ignore[arg-type]
                forward=functools.partial(_loss, mbm_loss(cfg.mask_ratio), model, batch),
                model=model,
            )
        )
    checked["out"] = out_status(out_path)
    return RunPlan("pretrain", checked, plans, notes)


# --------------------------------------------------------------------------------------------
# Stage 3: contrast
# --------------------------------------------------------------------------------------------


def plan_contrast(
    cfg: ContrastConfig, out: str | os.PathLike | None = None, resume: Resume = None
) -> RunPlan:
    """A dry run of :func:`mindvideo.training.contrast.contrast`."""
    from mindvideo.training.contrast import build_contrast, check_contrast_config

    check_contrast_config(cfg)
    notes = check_training_for_plan(cfg.train)
    out_path = Path(out) if out is not None else None
    _check_fresh(out_path, resume)
    setup = build_contrast(cfg, empty_weights=True)
    train = setup.dataset.windows
    encoder = setup.model.encoder
    c = encoder.config
    item = setup.dataset[0]  # one real sample: the augmentations and CLIP preprocessing run
    batch = _meta_batch(item, cfg.train.batch_size)
    phase = training_phase_plan(
        "contrast",
        cfg.train,
        data={
            "training windows": f"{len(train):,} = {train.n_segments} segments × {train.n_trs} TRs",
            "fMRI window": (
                f"{cfg.window} TRs × {train.prepared.n_voxels:,} voxels "
                f"(padded to {c.num_voxels:,})"
            ),
            "image, caption": (
                f"{list(item['pixel_values'].shape) if 'pixel_values' in item else '-'}, "
                f"{int(item['input_ids'].shape[-1]) if 'input_ids' in item else '-'} tokens "
                f"(mode {cfg.mode})"
            ),
            "test windows": (
                f"{len(setup.evaluator):,} ({len(setup.evaluator.unique_captions)} unique "
                f"captions, {len(setup.evaluator.unique_scenes)} scenes)"
            ),
            "encoder output": f"{c.out_tokens} × {c.cond_dim} tokens, pooled to "
            f"{c.pooled_dim or c.cond_dim}",
        },
        models=[
            ModelPart.of("fmri encoder", encoder),
            ModelPart.of("temperature", setup.model.temperature),
            ModelPart.of("clip (frozen)", setup.towers.model),
        ],
        samples=len(setup.dataset),
        forward=functools.partial(setup.model, batch["fmri"]),
        model=setup.model,
        batches_per_epoch=len(setup.sampler),
        settings={"batches": "scene-aware: no two samples of one scene in a batch"},
    )
    checked = {
        "data": f"{cfg.data}: prepared subject (train and test windows)"
        + (", the reference of a shared encoder" if cfg.subjects else ""),
        **_subjects_line(setup.shared, _contrast_adapters(cfg)),
        "encoder": f"{cfg.encoder}: MBM folder",
        "pretrained.clip": f"{cfg.pretrained.clip}: CLIP model, tokenizer and image processor",
        "out": out_status(out_path),
    }
    return RunPlan("contrast", checked, [phase], notes)


# --------------------------------------------------------------------------------------------
# Stages 4 and 5: tune-video, cotrain
# --------------------------------------------------------------------------------------------


def _latents(batch: int, channels: int, frames: int, size: int) -> torch.Tensor:
    return meta_like((batch, channels, frames, size, size))


def plan_tune_video(
    cfg: TuneVideoConfig, out: str | os.PathLike | None = None, resume: Resume = None
) -> RunPlan:
    """A dry run of :func:`mindvideo.training.tune_video.tune_video`."""
    from mindvideo.generator import trainable_parameters
    from mindvideo.training.diffusion import VideoDenoiser, check_clip_frames, clip_caption
    from mindvideo.training.tune_video import (
        check_generator_size,
        check_tune_video_config,
        load_stable_diffusion,
        open_captioned_data,
    )

    check_tune_video_config(cfg)
    notes = check_training_for_plan(cfg.train)
    out_path = Path(out) if out is not None else None
    prepared, captions = open_captioned_data(cfg.data)  # type: ignore[arg-type]
    _check_fresh(out_path, resume)
    sd = load_stable_diffusion(cfg.pretrained.stable_diffusion, empty_weights=True)  # type: ignore[arg-type]
    latent_size = check_generator_size(cfg.size, sd.unet, sd.vae)
    clips = check_clip_frames(prepared, cfg.frames)
    clip_captions = [clip_caption(tr[: cfg.frames]) for seg in captions for tr in seg]
    params = trainable_parameters(sd.unet, cfg.trainable)
    model = VideoDenoiser(sd.unet, sd.noise_scheduler)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    channels = int(sd.vae.config.latent_channels)
    b = cfg.train.batch_size
    latents = _latents(b, channels, cfg.frames, latent_size)
    tokens, width = int(sd.tokenizer.model_max_length), int(sd.text_encoder.config.hidden_size)
    text = meta_like((b, tokens, width))
    phase = training_phase_plan(
        "tune-video",
        cfg.train,
        data={
            "training clips": f"{len(clip_captions):,} = {clips.shape[0]} segments × "
            f"{clips.shape[1]} TRs",
            "clip": f"{cfg.frames} frames of {cfg.size} × {cfg.size} → latents "
            f"[{channels}, {cfg.frames}, {latent_size}, {latent_size}]",
            "captions": f"{len(set(clip_captions)):,} unique, one per clip",
            "trained modules": ", ".join(cfg.trainable),
        },
        models=[
            ModelPart.of("unet", sd.unet, params),
            ModelPart.of("vae", sd.vae, (), resident=False),
            ModelPart.of("text_encoder", sd.text_encoder, (), resident=False),
        ],
        samples=len(clip_captions),
        forward=functools.partial(model, latents, encoder_hidden_states=text),
        model=model,
    )
    checked = {
        "data": f"{cfg.data}: prepared subject with training captions",
        "pretrained.stable_diffusion": (
            f"{cfg.pretrained.stable_diffusion}: unet/, vae/, text_encoder/, tokenizer/, scheduler/"
        ),
        "out": out_status(out_path),
    }
    notes.append(
        "The VAE latents and caption embeddings are cached before training (OUT/cache); the "
        "VAE and text encoder then leave the device."
    )
    return RunPlan("tune-video", checked, [phase], notes)


def _contrast_adapters(cfg: ContrastConfig) -> str:
    from mindvideo.training.shared import subjects_folder

    saved = subjects_folder(cfg.encoder)
    if saved is not None:
        return f"adapters read from {saved}/subjects/ (the shared MBM's), saved in OUT/subjects/"
    return (
        "adapters fitted before training (ridge on every training segment), saved in OUT/subjects/"
    )


def _subjects_line(shared: Any, how: str) -> dict[str, str]:
    """The ``subjects`` line of a shared model's plan (none for one subject)."""
    if shared is None:
        return {}
    names = ", ".join(f"{s.name} ({s.voxels:,} voxels)" for s in shared.subjects[1:])
    return {"subjects": f"{names}: read through subject adapters; {how}"}


def plan_cotrain(
    cfg: CotrainConfig, out: str | os.PathLike | None = None, resume: Resume = None
) -> RunPlan:
    """A dry run of :func:`mindvideo.training.cotrain.cotrain`."""
    from mindvideo.data.prepared import PreparedData
    from mindvideo.generator import trainable_parameters
    from mindvideo.training.cotrain import (
        _encoder_parameters,
        check_cotrain_config,
        load_cotrain_inputs,
    )
    from mindvideo.training.diffusion import VideoDenoiser, check_clip_frames

    check_cotrain_config(cfg)
    notes = check_training_for_plan(cfg.train)
    out_path = Path(out) if out is not None else None
    prepared = PreparedData.open(cfg.data)  # type: ignore[arg-type]
    _check_fresh(out_path, resume)
    inputs = load_cotrain_inputs(cfg, prepared, empty_weights=True)
    generator, unet, encoder = inputs.generator, inputs.generator.unet, inputs.encoder
    encoder_folder, kind = inputs.encoder_folder, inputs.encoder_kind
    latent_size, pad_mode, windows = inputs.latent_size, inputs.pad_mode, inputs.windows
    check_clip_frames(prepared, cfg.frames)
    params = _encoder_parameters(encoder) + trainable_parameters(unet, cfg.trainable)
    model = VideoDenoiser(unet, generator.noise_scheduler, fmri_encoder=encoder)
    channels = int(generator.vae.config.latent_channels)
    b = cfg.train.batch_size
    latents = _latents(b, channels, cfg.frames, latent_size)
    fmri = meta_like((b, cfg.window, int(encoder.config.num_voxels)))
    phase = training_phase_plan(
        "cotrain",
        cfg.train,
        data={
            "fMRI-video pairs": f"{len(windows):,} = {windows.n_segments} segments × "
            f"{windows.n_trs} TRs",
            "fMRI window": f"{cfg.window} TRs × {prepared.n_voxels:,} voxels (padded to "
            f"{windows.n_voxels_padded:,}, {pad_mode})",
            "clip": f"{cfg.frames} frames of {cfg.size} × {cfg.size} → latents "
            f"[{channels}, {cfg.frames}, {latent_size}, {latent_size}]",
            "trained": f"the fMRI encoder (all but pool_proj), the UNet's "
            f"{', '.join(cfg.trainable)}",
        },
        models=[
            ModelPart.of("fmri encoder", encoder, params),
            ModelPart.of("unet", unet, params),
            ModelPart.of("vae", generator.vae, (), resident=False),
        ],
        samples=len(windows),
        forward=functools.partial(model, latents, fmri=fmri),
        model=model,
    )
    what = "spatiotemporal encoder" if kind == "SpatiotemporalEncoder" else "MBM, to be inflated"
    checked = {
        "data": f"{cfg.data}: prepared subject"
        + (", the reference of a shared encoder" if cfg.subjects else ""),
        **_subjects_line(
            inputs.shared, "adapters read from beside the encoder, saved in OUT/pipeline/subjects/"
        ),
        "encoder": f"{encoder_folder}: {what} ({int(encoder.config.num_voxels):,} voxels)",
        "generator": f"{cfg.generator}: unet/, vae/, scheduler/",
        "out": out_status(out_path),
    }
    notes.append("The VAE latents are cached before training (OUT/cache, or tune-video's).")
    return RunPlan("cotrain", checked, [phase], notes)
