"""The dry run of reconstruction (``mindvideo reconstruct --dry-run``): check, count, estimate.

:func:`plan_reconstruct` makes the checks :func:`mindvideo.pipeline.reconstruct.reconstruct` makes
(config, checkpoint folder, prepared data, the data fitting the encoder, an ``out`` made with
other settings) with its own functions, but builds the pipeline's models from their configs on
the meta device, so a paper-size run plans in seconds on a laptop; nothing is generated or
written. The training stages' dry runs are in :mod:`mindvideo.training.dry_run`, what they share
in :mod:`mindvideo.utils.dry_run`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from mindvideo.config import ReconstructConfig
from mindvideo.encoder.lowlevel import LowLevelDecoder
from mindvideo.pipeline.lowlevel_video import decoder_folder
from mindvideo.pipeline.pipeline_mindvideo import MindVideoPipeline, steps_from_video
from mindvideo.pipeline.reconstruct import (
    _autocast,
    _check_checkpoint,
    _check_config,
    _finished,
    _lowlevel_data,
    _plan_windows,
    _Windows,
    open_data,
)
from mindvideo.pipeline.schedulers import describe_sampler, sampler_for
from mindvideo.utils import UserError
from mindvideo.utils.dry_run import (
    FLOAT32_BYTES,
    MemoryEstimate,
    ModelPart,
    PhasePlan,
    RunPlan,
    activation_bytes,
    empty_model,
    meta_like,
    out_status,
    trace_activations,
)

__all__ = ["plan_reconstruct"]

logger = logging.getLogger(__name__)


def plan_reconstruct(cfg: ReconstructConfig, out: str | os.PathLike | None = None) -> RunPlan:
    """A dry run of :func:`~mindvideo.pipeline.reconstruct.reconstruct` (``--dry-run``).

    The same checks (config, checkpoint folder, prepared data, the data fitting the encoder,
    an ``out`` made with other settings), the pipeline's models built from their configs on the
    meta device, nothing generated or written. Returns a :class:`~mindvideo.utils.dry_run.RunPlan`
    with the windows, the models' parameters and a memory estimate (:mod:`mindvideo.utils.dry_run`).
    """
    _check_config(cfg, False)
    notes = []
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        _autocast(device, cfg.dtype)
    except UserError as exc:  # a plan for a GPU machine, made on a laptop
        notes.append(f"{str(exc).rstrip('.')}: on this machine the real run would stop here.")
    _check_checkpoint(cfg.checkpoint)  # type: ignore[arg-type]
    prepared = open_data(cfg)
    pipe = MindVideoPipeline.from_pretrained(cfg.checkpoint, empty_weights=True)  # type: ignore[arg-type]
    scheduler = sampler_for(pipe.scheduler, cfg.scheduler)
    out_path = Path(out) if out is not None else None
    run = _plan_windows(cfg, out_path, pipe, prepared)
    done = 0
    if out_path is not None and out_path.is_dir():
        done = sum(_finished(out_path, w, cfg.gif) for w in run.windows)

    enc, unet, vae = pipe.fmri_encoder, pipe.unet, pipe.vae
    models = [
        ModelPart.of("fmri_encoder", enc, trainable=()),
        ModelPart.of("unet", unet, trainable=()),
        ModelPart.of("vae", vae, trainable=()),
    ]
    steps_run = cfg.num_inference_steps
    if cfg.lowlevel is not None:
        folder = decoder_folder(cfg.lowlevel)
        decoder = empty_model(LowLevelDecoder, folder)
        low = decoder.config
        read = None if prepared is None else _lowlevel_data(cfg, prepared, low.num_voxels)
        if read is not None and read.n_voxels != low.num_voxels:
            raise UserError(
                f"The low-level decoder was fitted on {low.num_voxels} voxels per TR, but "
                f"{cfg.data} has {prepared.n_voxels}; fit it on this subject's prepared data."
            )
        models.append(ModelPart.of("lowlevel", decoder, trainable=(), resident=False))
        steps_run = steps_from_video(cfg.num_inference_steps, cfg.strength)
    memory = _memory_estimate(cfg, pipe, run, models)
    cond = enc.config
    n_voxels = prepared.n_voxels if prepared is not None else run.dataset.fmri_input.n_voxels
    n_batches = -(-len(run.windows) // cfg.batch_size)
    phase = PhasePlan(
        "reconstruct",
        data={
            "split": cfg.split if prepared is not None else "raw runs (--fmri)",
            "segments × TRs": [run.dataset.n_segments, run.dataset.n_trs],
            "voxels": f"{n_voxels:,} (padded to {cond.num_voxels:,})",
            # A caption run reads the same windows' captions instead of their fMRI.
            ("fMRI windows" if cfg.condition == "fmri" else "caption windows"): (
                f"{len(run.windows):,} of {cfg.window} TRs (TR stride {cfg.tr_stride}"
                f"{f', the first {cfg.limit}' if cfg.limit else ''})"
            ),
            "already done": f"{done:,} (a re-run skips them)",
            "video": f"{run.num_frames} frames of {run.size} × {run.size} at {cfg.fps} FPS",
        },
        models=models,
        memory=memory,
        settings={
            "sampler": (
                f"{describe_sampler(scheduler, cfg.scheduler)}, {cfg.num_inference_steps} steps"
            ),
            "condition": {
                "caption": "each window's caption through the text encoder (the generator's "
                "ceiling)",
                "linear": "each window's fMRI through a ridge map to the text condition, fitted "
                "on the training split (the linear encoder)",
            }.get(cfg.condition, "each window's fMRI through the encoder"),
            "guidance": f"{run.settings['negative']} negative, scale {cfg.guidance_scale:g}",
            "low-level path": (
                "off (sampling starts from noise, the paper's method)"
                if cfg.lowlevel is None
                else f"starts from the video {cfg.lowlevel} decodes, strength {cfg.strength:g}: "
                f"{steps_run} of {cfg.num_inference_steps} steps run"
                + ("; its first frame kept as the keyframe" if cfg.keyframe else "")
            ),
            "batches": f"{n_batches:,} of {cfg.batch_size} windows"
            f" → {n_batches * steps_run:,} UNet calls",
            "device, dtype": f"{device}, {cfg.dtype}",
        },
    )
    checked = {
        "checkpoint": f"{cfg.checkpoint}: pipeline folder (window {cond.window}, "
        f"{cond.num_voxels:,} voxels, {pipe.config.fmri_pad_mode} padding)",
        "data": (
            f"{cfg.data}: prepared subject, {cfg.split} split"
            + (f", through the subject adapter {cfg.adapter}" if cfg.adapter else "")
            + (
                f", {prepared.manifest['aligned']['adapter']} of the shared pipeline through its "
                "adapter"
                if prepared is not None and not cfg.adapter and "aligned" in prepared.manifest
                else ""
            )
            if prepared is not None
            else f"{len(cfg.fmri or [])} raw run(s) through the pipeline's fmri_input/"
        ),
        "out": out_status(out_path),
    }
    if cfg.condition == "caption":
        captions = {c for w in run.windows for c in w["captions"]}
        checked["text_encoder"] = f"{cfg.text_encoder}: text_encoder/ and tokenizer/ present"
        checked["data"] += f", {len(captions):,} unique window captions"
    elif cfg.condition == "linear":
        checked["text_encoder"] = f"{cfg.text_encoder}: text_encoder/ and tokenizer/ present"
    if cfg.lowlevel is not None:
        checked["lowlevel"] = (
            f"{cfg.lowlevel}: low-level decoder (window {low.window}, {low.frames} frames of "
            f"{low.out_size or low.frame_size}²)"
        )
    return RunPlan("reconstruct", checked, [phase], notes)


def _memory_estimate(
    cfg: ReconstructConfig, pipe: MindVideoPipeline, run: _Windows, models: list[ModelPart]
) -> MemoryEstimate:
    """Weights, and the activations at the peak of one sampler step (both guidance branches in
    one UNet call) or of decoding, traced on the meta device."""
    enc, unet, vae = pipe.fmri_encoder, pipe.unet, pipe.vae
    batch = min(cfg.batch_size, max(1, len(run.windows)))
    latent = run.size // pipe.vae_scale_factor
    channels, cond = int(unet.config.in_channels), enc.config
    latents = meta_like((2 * batch, channels, run.num_frames, latent, latent))
    condition = meta_like((2 * batch, cond.out_tokens, cond.cond_dim))
    fmri = meta_like((batch, cfg.window, cond.num_voxels))
    decode = meta_like((min(8, batch * run.num_frames), channels, latent, latent))
    traced = None
    try:
        with torch.no_grad():
            traced = max(
                trace_activations(lambda: enc.forward_sliding(fmri), peak=True),
                trace_activations(lambda: unet(latents, 1, condition).sample, peak=True),
                trace_activations(lambda: vae.decode(decode).sample, peak=True),
            )
    except Exception as exc:  # an estimate must never stop a dry run
        logger.warning("Could not trace the activations of the reconstruction (%s).", exc)
    return MemoryEstimate(
        weights=FLOAT32_BYTES * sum(p.parameters for p in models),
        activations=activation_bytes(traced, cfg.dtype),
        activations_how=(
            f"peak of one UNet call on {2 * batch} videos (both guidance branches) or of "
            "decoding 8 frames, traced"
            + (f", halved for {cfg.dtype}" if cfg.dtype != "float32" else "")
        ),
    )
