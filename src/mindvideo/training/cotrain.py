"""Stage 5, co-training: the fMRI encoder and the video UNet trained together (paper 3.4, B).

Paper 3.4, "Divide and Refine": after the encoder (contrastive learning) and the generator
(video tuning) are trained separately, "two modules are tuned together with fMRI-video pairs,
where the encoder and part of the generative model are trained" — the whole fMRI encoder plus
the UNet's self-, cross- and temporal attention (B: batch 9, lr 3e-5, 15,000 steps). The
encoder's ``[77, d]`` output takes the place of the text embedding; the loss is the denoising
loss on the latents of the clip shown during the window's first TR
(:class:`~mindvideo.training.diffusion.VideoDenoiser`).

Inputs: the prepared subject's *training* split as fMRI windows
(:class:`~mindvideo.data.datasets.FMRIWindowDataset`), the encoder folder written by
``mindvideo contrast`` (or an MBM folder written by ``mindvideo pretrain``: it is inflated with
:meth:`SpatiotemporalEncoder.from_mbm` — Table 1's "without contrastive learning" ablation), and
the generator folder written by ``mindvideo tune-video`` (a Stable Diffusion folder works too: its
UNet is inflated with identity temporal layers — training without video tuning).

Output folder::

    OUT/
      pipeline/      the reconstruction pipeline: model_index.json, fmri_encoder/, unet/, vae/,
                     scheduler/ (DDIM, from the training noise schedule) — pass it to
                     `mindvideo reconstruct --checkpoint OUT/pipeline`
      config.yaml    the resolved configuration
      cache/         the VAE latents of the training clips (unless video tuning's are reused)
      checkpoints/   resumable training state; logs/metrics.jsonl
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mindvideo.config import CotrainConfig, save_config
from mindvideo.encoder import MBMAutoencoder, SpatiotemporalEncoder
from mindvideo.generator import VideoUNet, trainable_parameters, trained_keys
from mindvideo.generator.unet import TRAINED_WEIGHTS
from mindvideo.training.diffusion import (
    CACHE_DIR,
    LatentCache,
    VideoDenoiser,
    build_latent_cache,
    check_model_folder,
    load_noise_scheduler,
)
from mindvideo.training.engine import check_engine_config, reset_accelerate_state
from mindvideo.training.tune_video import (
    check_fresh_output,
    check_generator_size,
    record_trained_size,
    train_video_denoiser,
)
from mindvideo.utils import UserError, atomic_dir
from mindvideo.utils.base_folder import component_dir, read_base

__all__ = [
    "PIPELINE_DIR",
    "CotrainDataset",
    "GeneratorParts",
    "check_condition_width",
    "check_cotrain_config",
    "cotrain",
    "find_encoder_folder",
    "load_fmri_encoder",
    "load_generator",
]

logger = logging.getLogger(__name__)

PIPELINE_DIR = "pipeline"
"""Sub-folder of co-training's output holding the pipeline (``mindvideo reconstruct`` reads it)."""
_ENCODER_CLASSES = ("SpatiotemporalEncoder", "MBMAutoencoder")


# --------------------------------------------------------------------------------------------
# Loading the two modules
# --------------------------------------------------------------------------------------------


@dataclass
class GeneratorParts:
    """What co-training takes from video tuning's folder: the video UNet, the VAE, the training
    noise schedule (``DDPMScheduler``) and the folder's scheduler config as stored."""

    unet: VideoUNet
    vae: Any
    noise_scheduler: Any
    scheduler_config: dict[str, Any]
    base: Path | None = None
    """The local Stable Diffusion folder the generator builds on (``None``: unknown, e.g. a
    standalone tune-video folder): with it, the pipeline is saved light."""
    trained: frozenset[str] = frozenset()
    """The UNet keys video tuning trained (a light generator's ``trained.safetensors``)."""


def load_generator(path: str | os.PathLike, empty_weights: bool = False) -> GeneratorParts:
    """Load the folder written by ``mindvideo tune-video`` (``unet/``, ``vae/``, ``scheduler/``).

    A Stable Diffusion folder (2D ``unet/``) is accepted too; its UNet is inflated with identity
    temporal layers. ``empty_weights``: the models are built from their configs on the meta
    device (a dry run).
    """
    from diffusers import AutoencoderKL, DDPMScheduler

    fix = "pass the folder written by `mindvideo tune-video` (--generator DIR)."
    local = check_model_folder(path, ("unet", "scheduler"), "The generator folder", fix)
    vae_dir: str | Path = path
    base, trained = None, frozenset()
    if local:
        try:
            vae_dir = component_dir(path, "vae").parent
        except UserError as exc:
            raise UserError(f"The generator folder {path} has no vae/ folder; {fix}") from exc
        unet_dir = Path(path) / "unet"
        if (unet_dir / TRAINED_WEIGHTS).is_file():  # a light tune-video folder
            base = read_base(unet_dir)
            trained = frozenset(safetensors_keys(unet_dir / TRAINED_WEIGHTS))
        elif _class_name(unet_dir) == "UNet2DConditionModel":  # Stable Diffusion itself
            base = Path(path).resolve()
    path = str(path)
    if empty_weights:
        from mindvideo.utils.dry_run import empty_model

        unet = empty_model(VideoUNet, path, "unet")
        vae = empty_model(AutoencoderKL, str(vae_dir), "vae")
    else:
        unet = VideoUNet.from_pretrained(path, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(str(vae_dir), subfolder="vae")
    vae = vae.requires_grad_(False).eval()
    scheduler_config = dict(DDPMScheduler.load_config(path, subfolder="scheduler"))
    return GeneratorParts(
        unet, vae, load_noise_scheduler(path), scheduler_config, base=base, trained=trained
    )


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a safetensors file (nothing else is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _class_name(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (json.JSONDecodeError, AttributeError):
        return None


def find_encoder_folder(path: str | os.PathLike) -> tuple[Path, str]:
    """The encoder model folder in ``path`` and its class name.

    ``path`` may be the model folder itself (``config.json`` naming ``SpatiotemporalEncoder``
    or ``MBMAutoencoder``), or a stage's output folder holding one in a sub-folder (e.g.
    contrast's ``fmri_encoder/``, a pipeline folder). A spatiotemporal encoder is preferred
    over an MBM when both are there.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(
            f"The encoder folder {root} does not exist; pass the folder written by `mindvideo "
            "contrast` (or `mindvideo pretrain`) with --encoder DIR."
        )
    found = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        name = _class_name(folder)
        if name in _ENCODER_CLASSES:
            found.append((folder, name))
    for wanted in _ENCODER_CLASSES:
        for folder, name in found:
            if name == wanted:
                return folder, name
    raise UserError(
        f"{root} holds no fMRI encoder (a config.json naming SpatiotemporalEncoder or "
        "MBMAutoencoder, there or in a sub-folder); pass the folder written by `mindvideo "
        "contrast` (or `mindvideo pretrain`) with --encoder DIR."
    )


def load_fmri_encoder(
    path: str | os.PathLike, window: int, cond_dim: int, empty_weights: bool = False
) -> tuple[SpatiotemporalEncoder, Path, str]:
    """Load the fMRI encoder for co-training; returns ``(encoder, folder, class name)``.

    A :class:`SpatiotemporalEncoder` (contrast's output) is loaded as saved; an
    :class:`MBMAutoencoder` (pretrain's output, contrast skipped) is inflated to ``window`` TRs
    with ``cond_dim`` conditioning width. ``empty_weights``: built from its config on the meta
    device (a dry run).
    """
    from mindvideo.utils.dry_run import empty_model
    from mindvideo.utils.dry_run import empty_weights as meta_device

    folder, name = find_encoder_folder(path)
    if name == "MBMAutoencoder":
        if empty_weights:
            mbm = empty_model(MBMAutoencoder, folder)
        else:
            mbm = MBMAutoencoder.from_pretrained(str(folder))
        with meta_device(empty_weights):
            encoder = SpatiotemporalEncoder.from_mbm(mbm, window=window, cond_dim=cond_dim)
        logger.info("Inflated the MBM encoder in %s (contrastive learning skipped).", folder)
    else:
        if empty_weights:
            encoder = empty_model(SpatiotemporalEncoder, folder)
        else:
            encoder = SpatiotemporalEncoder.from_pretrained(str(folder))
        if encoder.config.window != window:
            raise UserError(
                f"The fMRI encoder in {folder} was trained on windows of "
                f"{encoder.config.window} TRs but the config has window={window}; set window="
                f"{encoder.config.window}."
            )
    return encoder, folder, name


def check_condition_width(encoder: nn.Module, unet: nn.Module, encoder_path: Any, unet_path: Any):
    """The encoder's ``cond_dim`` must equal the UNet's ``cross_attention_dim``."""
    cond_dim = int(encoder.config.cond_dim)
    cross = int(unet.config.cross_attention_dim)
    if cond_dim != cross:
        raise UserError(
            f"The fMRI encoder in {encoder_path} has cond_dim {cond_dim} but the UNet in "
            f"{unet_path} has cross_attention_dim {cross}; train the encoder (contrast) with "
            "the text encoder of the same Stable Diffusion, so both widths agree."
        )


def _pad_mode_for(
    encoder_folder: Path,
    n_voxels: int,
    encoder: SpatiotemporalEncoder,
    data: Any,
    pad_mode: str | None = None,
) -> str:
    """How the stage that trained the encoder padded the voxels: ``pad_mode`` when given, else
    its ``config.yaml``'s ``pad_mode`` when found beside the encoder, else the mode that gives
    its ``num_voxels``. A :class:`UserError` naming both folders when the prepared data
    (``data``, ``n_voxels`` ROI voxels) cannot give the encoder's ``num_voxels``."""
    from mindvideo.config import ContrastConfig, PretrainConfig, load_config
    from mindvideo.data.pairing import padded_size

    patch, num_voxels = int(encoder.config.patch_size), int(encoder.config.num_voxels)
    if pad_mode is not None and padded_size(n_voxels, patch, pad_mode) == num_voxels:
        return pad_mode
    for folder in () if pad_mode is not None else (encoder_folder, encoder_folder.parent):
        recipe = folder / "config.yaml"
        if not recipe.is_file():
            continue
        for cls in (ContrastConfig, PretrainConfig):
            try:
                mode = load_config(cls, recipe).pad_mode
            except UserError:
                continue
            if padded_size(n_voxels, patch, mode) == num_voxels:
                return mode
    for mode in () if pad_mode is not None else ("zero", "wrap_compat"):
        if padded_size(n_voxels, patch, mode) == num_voxels:
            return mode
    raise UserError(
        f"The fMRI encoder in {encoder_folder} takes {num_voxels} voxels but the prepared data "
        f"{data} has {n_voxels} ROI voxels (padded to "
        f"{padded_size(n_voxels, patch, pad_mode or 'zero')}); use the encoder trained on this "
        "subject's prepared data."
    )


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class CotrainDataset(Dataset):
    """fMRI-video pairs of the training split: the window of TR ``t`` and the latents of the clip
    shown during TR ``t`` (paper 3.3–3.4).

    Item: ``fmri`` float32 ``[w, V_padded]`` (normalised with training statistics, padded);
    ``latents_mean``, ``latents_std`` float32 ``[C, F, h, w]``; ``index`` int.
    """

    def __init__(self, windows: Any, latents: LatentCache) -> None:
        if len(windows) != len(latents):
            raise ValueError(f"{len(windows)} fMRI windows but {len(latents)} cached clips")
        self.windows = windows
        self.latents = latents

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        segment, repetition, t = self.windows.locate(index)  # index = segment · T + t
        mean, std = self.latents.item(index)
        return {
            "fmri": torch.from_numpy(self.windows.fmri_window(segment, t, repetition)),
            "latents_mean": mean,
            "latents_std": std,
            "index": index,
        }


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _encoder_parameters(encoder: SpatiotemporalEncoder) -> list[nn.Parameter]:
    """Every encoder parameter that reaches the ``[77, d]`` condition ("the whole encoder");
    ``pool_proj`` (contrastive pooling only) gets no gradient here and stays as it is."""
    return [p for n, p in encoder.named_parameters() if not n.startswith("pool_proj")]


def check_cotrain_config(cfg: CotrainConfig) -> None:
    """Raise a :class:`UserError` naming the key for settings the stage cannot run with (the
    training keys are checked by :func:`~mindvideo.training.engine.check_engine_config`)."""
    for key, flag, stage in (
        ("data", "--data", "mindvideo prepare"),
        ("encoder", "--encoder", "mindvideo contrast"),
        ("generator", "--generator", "mindvideo tune-video"),
    ):
        if not getattr(cfg, key):
            raise UserError(
                f"cotrain needs the folder written by `{stage}`: pass {flag} DIR or set {key} "
                "in the config."
            )
    if cfg.frames < 1 or cfg.window < 1:
        raise UserError(
            f"Config keys 'frames' and 'window' must be at least 1, not {cfg.frames} and "
            f"{cfg.window}."
        )


@dataclass
class CotrainInputs:
    """What co-training reads, checked: the generator, the encoder (and where and what it
    was), the latent size, the voxel padding and the training windows."""

    generator: GeneratorParts
    encoder: SpatiotemporalEncoder
    encoder_folder: Path
    encoder_kind: str
    latent_size: int
    pad_mode: str
    windows: Any
    shared: Any = None
    """With ``subjects``: the :class:`~mindvideo.training.shared.SharedData`; else ``None``."""


def load_cotrain_inputs(cfg: CotrainConfig, prepared: Any, empty_weights: bool = False):
    """Load and check the generator and encoder against ``prepared`` and list the training
    windows; shared by :func:`cotrain` and its dry run (``empty_weights``: shapes only)."""
    from mindvideo.data.datasets import FMRIWindowDataset

    generator = load_generator(cfg.generator, empty_weights=empty_weights)  # type: ignore[arg-type]
    unet = generator.unet
    encoder, folder, kind = load_fmri_encoder(
        cfg.encoder,  # type: ignore[arg-type]
        cfg.window,
        int(unet.config.cross_attention_dim),
        empty_weights=empty_weights,
    )
    check_condition_width(encoder, unet, folder, Path(cfg.generator) / "unet")  # type: ignore[arg-type]
    latent_size = check_generator_size(cfg.size, unet, generator.vae)
    pad_mode = _pad_mode_for(folder, prepared.n_voxels, encoder, cfg.data, cfg.pad_mode)
    shared = _shared_subjects(cfg, folder, empty_weights)
    windows = FMRIWindowDataset(
        prepared if shared is None else shared.pooled,
        "train",
        window=cfg.window,
        patch_size=int(encoder.config.patch_size),
        pad_mode=pad_mode,  # type: ignore[arg-type]
        with_captions=False,
    )
    return CotrainInputs(generator, encoder, folder, kind, latent_size, pad_mode, windows, shared)


def _shared_subjects(cfg: CotrainConfig, encoder_folder: Path, empty_weights: bool) -> Any:
    """The subjects of a shared encoder, with their adapters as ``contrast`` saved them; ``None``
    for a single-subject encoder. A :class:`UserError` when ``data`` and ``subjects`` are not the
    subjects the encoder was trained on."""
    from mindvideo.training.shared import open_subjects, subjects_folder

    saved = subjects_folder(cfg.encoder, encoder_folder)
    if saved is None and not cfg.subjects:
        return None
    if saved is None:
        raise UserError(
            f"The fMRI encoder {cfg.encoder} was trained on one subject, not on the "
            f"{1 + len(cfg.subjects)} given with --data: train a shared encoder with `mindvideo "
            "contrast --data` on the same folders first."
        )
    if not cfg.subjects:
        raise UserError(
            f"The fMRI encoder {cfg.encoder} was trained on several subjects ({saved}/subjects/"
            "subjects.json): pass all of them with --data, in the order contrast was given them."
        )
    return open_subjects(cfg.data, cfg.subjects, adapters_from=saved, fit=not empty_weights)  # type: ignore[arg-type]


def cotrain(
    cfg: CotrainConfig, out_dir: str | os.PathLike, resume: str | os.PathLike | None = None
) -> Path:
    """Run co-training (stage 5); returns the pipeline folder ``OUT/pipeline``.

    ``resume``: ``None`` (a fresh run), ``"latest"`` or a ``checkpoints/step_N`` folder.
    """
    from accelerate import PartialState

    from mindvideo.data.datasets import FMRINormalizer
    from mindvideo.data.prepared import PreparedData
    from mindvideo.pipeline import MindVideoPipeline, make_scheduler
    from mindvideo.pipeline.fmri_input import FmriInput
    from mindvideo.pipeline.shared import SegmentStack, save_subjects

    check_cotrain_config(cfg)
    check_engine_config(cfg.train)
    out = Path(out_dir)
    prepared = PreparedData.open(cfg.data)
    check_fresh_output(out, resume)

    state = PartialState(cpu=cfg.train.cpu or not torch.cuda.is_available())
    try:
        inputs = load_cotrain_inputs(cfg, prepared)
        generator, unet, encoder = inputs.generator, inputs.generator.unet, inputs.encoder
        latent_size, pad_mode, windows = inputs.latent_size, inputs.pad_mode, inputs.windows
        # Written once every input has been checked: a refused run leaves no output folder.
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

        # Video tuning's cache is used as it is when it was made from the same clips and VAE.
        with state.main_process_first():
            latents = build_latent_cache(
                generator.vae,
                prepared,
                out / CACHE_DIR,
                size=cfg.size,
                frames=cfg.frames,
                device=state.device,
                reuse=[Path(cfg.generator) / CACHE_DIR],
            )
        state.wait_for_everyone()
        generator.vae.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

        if inputs.shared is not None:  # every subject watched the reference's clips
            copies = len(inputs.shared.subjects)
            latents = dataclasses.replace(
                latents,
                mean=SegmentStack([latents.mean] * copies),
                std=SegmentStack([latents.std] * copies),
            )
        dataset = CotrainDataset(windows, latents)
        reference_normaliser = windows.normalizer
        if inputs.shared is not None:
            reference_normaliser = FMRINormalizer(windows.normalizer.mode).fit(prepared.fmri_train)
        model = VideoDenoiser(unet, generator.noise_scheduler, fmri_encoder=encoder)
        params = _encoder_parameters(encoder) + trainable_parameters(unet, cfg.trainable)

        def save(trained: nn.Module, folder: Path) -> None:
            record_trained_size(trained.unet, latent_size)
            # DDIM for inference (paper B) on the training noise schedule; latents must not be
            # clipped to [-1, 1] (DDIM's default), which SD-1.5's PNDM config leaves unsaid.
            overrides = (
                {} if "clip_sample" in generator.scheduler_config else {"clip_sample": False}
            )
            scheduler = make_scheduler("ddim", generator.scheduler_config, **overrides)
            pipe = MindVideoPipeline(
                vae=generator.vae,
                unet=trained.unet,
                fmri_encoder=trained.fmri_encoder,
                scheduler=scheduler,
                frames_per_tr=cfg.frames,
                fmri_pad_mode=pad_mode,
                fmri_normalize=windows.normalizer.mode,
            )
            with atomic_dir(folder / PIPELINE_DIR) as tmp:
                if generator.base is not None:
                    # What video tuning and co-training trained, the encoder, and the base
                    # Stable Diffusion folder for the frozen VAE and UNet weights.
                    keys = generator.trained | trained_keys(trained.unet, cfg.trainable)
                    pipe.save_light(tmp, generator.base, keys)
                else:
                    pipe.save_pretrained(tmp)
                # The normaliser, ROI, window and pairing: the folder decodes raw runs alone
                # (of the reference subject, normalised with its own statistics).
                FmriInput.from_prepared(prepared, reference_normaliser, cfg.window).save(tmp)
                if inputs.shared is not None:
                    save_subjects(inputs.shared.subjects, tmp)
            logger.info("wrote the co-trained pipeline to %s", folder / PIPELINE_DIR)

        train_video_denoiser(
            model, dataset, latents, params, cfg.train, out, save, resume, "cotrain", state
        )
    finally:
        reset_accelerate_state()
    return out / PIPELINE_DIR
