"""Convert the authors' released MinD-Video pipeline folder into ours (``mindvideo convert``).

The release is a diffusers-style folder::

    model_index.json
    unet/           config.json (Tune-A-Video UNet3DConditionModel) + diffusion_pytorch_model.bin
    vae/            diffusers AutoencoderKL
    scheduler/      diffusers scheduler_config.json
    fmri_encoder/   config.json (their fMRIEncoder) + model.pth or diffusion_pytorch_model.bin

- ``unet/`` → :class:`~mindvideo.generator.VideoUNet` through the generator's converter (same
  module names; legacy attention names, ``module.`` prefixes and 1×1-conv projections handled).
- ``fmri_encoder/`` → :class:`~mindvideo.encoder.SpatiotemporalEncoder` by
  :func:`encoder_from_authors`: the parameter names are the same (``patch_embed.proj``,
  ``blocks.i.{norm1, attn.qkv, attn.proj, norm_temp, attn_temp.qkv, attn_temp.proj, norm2,
  mlp.fc1, mlp.fc2}``, ``norm``, ``proj_head.{channel_mapper, projection, fc, layer_norm}``); the
  architecture is read from the tensor shapes, and the few settings shapes cannot tell from
  ``config.json`` (see :func:`encoder_config_from_authors`).
- ``vae/`` and ``scheduler/`` are diffusers components, loaded and saved again (safetensors).

Weights are read without executing pickle code (``torch.load(weights_only=True)`` or
safetensors). The result is a pipeline folder for :class:`MindVideoPipeline` with
``fmri_pad_mode="wrap_compat"`` (the authors pad voxels by wrapping) and a conversion report
``conversion.json`` (renamed, dropped, missing and unexpected keys, the assumed settings).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mindvideo.encoder.layers import get_1d_sincos_pos_embed
from mindvideo.encoder.spatiotemporal import SpatiotemporalEncoder
from mindvideo.generator.convert import convert_authors_unet
from mindvideo.generator.unet import VideoUNet
from mindvideo.pipeline.pipeline_mindvideo import MindVideoPipeline
from mindvideo.utils import UserError, atomic_dir
from mindvideo.utils.checkpoints import (
    find_weights_file,
    load_state_dict_safely,
    read_json_object,
)

__all__ = [
    "EncoderConversionReport",
    "PipelineConversionReport",
    "authors_settings_note",
    "convert_authors_pipeline",
    "encoder_config_from_authors",
    "encoder_from_authors",
]

logger = logging.getLogger(__name__)

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.pth",
    "pytorch_model.bin",
)
#: Keys of the authors' fMRIEncoder with no place in ours, and why.
DROPPED_ENCODER_KEYS = {
    "cls_token": "their forward never uses the CLS token (ours is built without one)",
    "mask_token": "used only by masked pretraining",
    "pos_embed": "the fixed sin-cos position embedding, recomputed by ours (compared)",
    "logit_scale": "the contrastive temperature, not used for generation",
}
#: The authors' fMRIEncoder defaults, for settings a config.json leaves out.
AUTHORS_ENCODER_DEFAULTS = {"num_heads": 16, "window_size": 1, "dropout": 0.0}


@dataclass
class EncoderConversionReport:
    """What :func:`encoder_from_authors` did with the checkpoint's keys."""

    weights: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # our SpatiotemporalEncoder config
    assumed: dict[str, Any] = field(default_factory=dict)  # settings taken from defaults
    renamed: dict[str, str] = field(default_factory=dict)  # checkpoint key → ours
    dropped: dict[str, str] = field(default_factory=dict)  # checkpoint key → reason
    missing: list[str] = field(default_factory=list)  # our keys the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place
    notes: list[str] = field(default_factory=list)

    @property
    def missing_required(self) -> list[str]:
        """Missing keys other than the temporal layers ours adds at identity."""
        fresh = ("temporal_pos_embed", ".attn_temp.", ".norm_temp.")
        return [k for k in self.missing if not any(f in k for f in fresh)]


@dataclass
class PipelineConversionReport:
    """The report saved as ``conversion.json``."""

    authors: str
    out: str
    unet: dict[str, Any]
    fmri_encoder: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    pipeline: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def summary(self) -> str:
        """A few lines for the terminal."""
        u, e = self.unet, self.fmri_encoder
        return "\n".join(
            [
                f"converted {self.authors} -> {self.out}",
                f"  unet: {len(u['renamed'])} renamed, {len(u['reshaped'])} reshaped, "
                f"{len(u['missing'])} missing, {len(u['unexpected'])} unexpected keys",
                f"  fmri_encoder: {len(e['renamed'])} renamed, {len(e['dropped'])} dropped, "
                f"{len(e['missing'])} missing, {len(e['unexpected'])} unexpected keys; "
                f"{e['config']['num_voxels']} voxels, window {e['config']['window']}",
                f"  assumed: {e['assumed'] or 'nothing'}",
                *(f"  note: {n}" for n in e["notes"]),
                f"  vae: {self.vae['class']}, scheduler: {self.scheduler['class']}",
            ]
        )


# ----------------------------------------------------------------------------- fMRI encoder


def encoder_config_from_authors(
    state: dict[str, torch.Tensor], config: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Our :class:`SpatiotemporalEncoder` config for the authors' encoder weights ``state``.

    From the shapes: ``patch_size`` and ``embed_dim`` (``patch_embed.proj.weight [D, 1, p]``),
    ``depth`` (number of blocks), ``mlp_ratio`` (``mlp.fc1``), ``out_tokens`` and ``cond_dim``
    (``proj_head.channel_mapper [77, L·w]``, ``proj_head.projection [d, D]``), ``output_norm``
    (``proj_head.layer_norm``), ``qkv_bias``, the patches ``L`` (``pos_embed [1, L+1, D]``) and so
    ``num_voxels = L·p`` (the padded count: the released ``config.json`` holds the number of the
    data it was built with, which their loader overwrites). From ``config.json``: ``num_heads``,
    ``window_size`` (checked against ``channel_mapper``) and ``dropout`` (used as head dropout and
    stochastic depth, as their code does); a missing one takes their default (reported as
    assumed). ``use_cls_token=False``: their forward adds ``pos_embed[:, 1:]`` and no CLS token.

    Returns ``(config, assumed, notes)``.
    """
    assumed: dict[str, Any] = {}
    notes: list[str] = []

    def setting(key: str) -> Any:
        if key in config:
            return config[key]
        assumed[key] = AUTHORS_ENCODER_DEFAULTS[key]
        return AUTHORS_ENCODER_DEFAULTS[key]

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise UserError(
                f"The fmri_encoder checkpoint has no {key!r}; is it the authors' fMRIEncoder?"
            )
        return state[key]

    embed_dim, _, patch_size = need("patch_embed.proj.weight").shape
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise UserError("The fmri_encoder checkpoint has no transformer blocks ('blocks.0.*').")
    mlp_ratio = need("blocks.0.mlp.fc1.weight").shape[0] / embed_dim
    out_tokens, head_in = need("proj_head.channel_mapper.weight").shape
    cond_dim = need("proj_head.projection.weight").shape[0]
    if "pos_embed" in state:
        num_patches = state["pos_embed"].shape[-2] - 1
        window = head_in // num_patches if head_in % num_patches == 0 else None
        if "window_size" in config and config["window_size"] != window:
            raise UserError(
                f"window_size = {config['window_size']} in the fmri_encoder config.json does not "
                f"fit the weights (channel_mapper takes {head_in} tokens = {num_patches} patches "
                f"× window); the config and weights do not belong together."
            )
        if window is None:
            raise UserError(
                f"The fmri_encoder's channel_mapper takes {head_in} tokens, not a multiple of its "
                f"{num_patches} patches; the checkpoint is not an fMRIEncoder."
            )
    else:
        window = int(setting("window_size"))
        if head_in % window:
            raise UserError(
                f"The fmri_encoder's channel_mapper takes {head_in} tokens, not a multiple of "
                f"window_size = {window}; set window_size in its config.json."
            )
        num_patches = head_in // window
    num_voxels = num_patches * patch_size
    if config.get("num_voxels") not in (None, num_voxels):
        notes.append(
            f"config.json says num_voxels = {config['num_voxels']}, the weights have "
            f"{num_patches} patches of {patch_size} = {num_voxels} voxels (used)."
        )
    num_heads = int(setting("num_heads"))
    if embed_dim % num_heads:
        raise UserError(
            f"num_heads = {num_heads} does not divide the encoder width {embed_dim}; set num_heads "
            "in the fmri_encoder config.json."
        )
    dropout = float(setting("dropout"))
    if "proj_head.layer_norm_in.weight" in state:
        raise UserError(
            "The fmri_encoder uses an input LayerNorm in its projection head (use_norm_in), "
            "which mindvideo's encoder does not have."
        )
    ours = dict(
        num_voxels=int(num_voxels),
        patch_size=int(patch_size),
        embed_dim=int(embed_dim),
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=float(mlp_ratio),
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        use_cls_token=False,
        window=int(window),
        max_window=max(8, int(window)),
        out_tokens=int(out_tokens),
        cond_dim=int(cond_dim),
        dropout=dropout,
        drop_path=dropout,
        output_norm="proj_head.layer_norm.weight" in state,
    )
    return ours, assumed, notes


def encoder_from_authors(
    folder: str | os.PathLike, strict: bool = True
) -> tuple[SpatiotemporalEncoder, EncoderConversionReport]:
    """Build a :class:`SpatiotemporalEncoder` from the authors' ``fmri_encoder/`` folder.

    ``folder``: the pipeline folder or its ``fmri_encoder/``. With ``strict`` (default) a
    checkpoint key with no place in ours, or a missing key outside the temporal layers, is a
    :class:`UserError`. Temporal layers absent from the checkpoint (an encoder trained with
    ``use_temp_attn=False``) and our temporal position embedding (the authors' model has none)
    stay at their identity initialisation, which reproduces the authors' computation.
    """
    folder = Path(folder)
    enc_dir = folder / "fmri_encoder" if (folder / "fmri_encoder").is_dir() else folder
    if not enc_dir.is_dir():
        raise UserError(f"{folder} has no fmri_encoder/ folder; give the authors' pipeline folder.")
    config_path = enc_dir / "config.json"
    config = read_json_object(config_path) if config_path.is_file() else {}
    weights = find_weights_file(enc_dir, WEIGHT_FILES)
    # a training checkpoint wraps the model's tensors as {"model": ...}; its extras are dropped
    raw = load_state_dict_safely(weights, unwrap=("model", "state_dict"), drop_non_tensors=True)

    report = EncoderConversionReport(weights=str(weights))
    stripped: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = key.removeprefix("module.")  # saved from inside DistributedDataParallel
        if name != key:
            report.renamed[key] = name
        stripped[name] = tensor
    ours, report.assumed, report.notes = encoder_config_from_authors(stripped, config)
    state = {k: v for k, v in stripped.items() if k not in DROPPED_ENCODER_KEYS}
    report.dropped = {k: DROPPED_ENCODER_KEYS[k] for k in stripped if k in DROPPED_ENCODER_KEYS}
    report.config = ours
    if not config_path.is_file():
        report.notes.append(f"{config_path} is missing; settings came from the weights.")

    model = SpatiotemporalEncoder(**ours)
    expected = model.state_dict()
    for name, tensor in list(state.items()):
        if name not in expected:
            report.unexpected.append(name)
            del state[name]
        elif tensor.shape != expected[name].shape:
            raise UserError(
                f"fmri_encoder tensor {name!r} has shape {tuple(tensor.shape)}, but the encoder "
                f"built from its shapes expects {tuple(expected[name].shape)}."
            )
    report.missing = sorted(set(expected) - set(state))
    if strict and (report.unexpected or report.missing_required):
        raise UserError(
            f"{weights} does not fit mindvideo's encoder: unexpected keys "
            f"{report.unexpected[:5]}, missing keys {report.missing_required[:5]}; pass "
            "strict=False to load what fits."
        )
    model.load_state_dict(state, strict=False)

    # Their fixed position embedding should be the same sin-cos formula as ours.
    if "pos_embed" in stripped:
        theirs = (
            stripped["pos_embed"].reshape(-1, ours["embed_dim"])[1:].float()
        )  # drop the CLS row
        formula = get_1d_sincos_pos_embed(ours["embed_dim"], theirs.shape[0])
        diff = float((theirs - formula).abs().max())
        if diff > 1e-4:
            report.notes.append(
                f"the checkpoint's pos_embed differs from the sin-cos formula by up to {diff:.3g}; "
                "mindvideo uses the formula, so outputs differ slightly from the authors' model."
            )
    return model.eval(), report


# ----------------------------------------------------------------------------- UNet


def _unet_from_authors(
    folder: Path, resolution: int | None, vae_scale_factor: int, strict: bool
) -> tuple[VideoUNet, dict[str, Any]]:
    """The generator's converter on ``folder/unet``, at ``resolution`` pixels when given."""
    if not (folder / "unet" / "config.json").is_file():
        raise UserError(f"{folder} has no unet/config.json; give the authors' pipeline folder.")
    sample_size = None
    if resolution is not None:
        if resolution % vae_scale_factor:
            raise UserError(
                f"--resolution {resolution} is not a multiple of the VAE scale factor "
                f"{vae_scale_factor}."
            )
        sample_size = resolution // vae_scale_factor
    unet, report, weights = convert_authors_unet(folder / "unet", strict, sample_size)
    return unet.eval(), {
        "weights": str(weights),
        "sample_size": unet.config.sample_size,
        **asdict(report),
    }


# ----------------------------------------------------------------------------- pipeline


def convert_authors_pipeline(
    authors: str | os.PathLike,
    out: str | os.PathLike,
    resolution: int | None = 256,
    frames_per_tr: int = 6,
    strict: bool = True,
) -> PipelineConversionReport:
    """Convert the authors' released pipeline folder ``authors`` into our pipeline folder ``out``.

    ``resolution``: the video size the model was tuned at (paper: 256), recorded as the UNet's
    ``sample_size`` so reconstructions default to it (``None`` keeps the released config's).
    ``out`` is written atomically and holds ``conversion.json``; an existing ``out`` is replaced
    only if it is a previous conversion.
    """
    import diffusers

    authors, out = Path(authors), Path(out)
    if not authors.is_dir():
        raise UserError(f"{authors} does not exist; pass the authors' released pipeline folder.")
    if out.resolve() == authors.resolve():
        raise UserError("--out must differ from --authors; choose a new directory.")
    if out.exists() and any(out.iterdir()) and not (out / "conversion.json").is_file():
        raise UserError(f"{out} exists and is not a previous conversion; choose a new directory.")
    for sub in ("unet", "vae", "scheduler", "fmri_encoder"):
        if not (authors / sub).is_dir():
            raise UserError(
                f"{authors} has no {sub}/ folder; the authors' pipeline folder holds unet/, vae/, "
                "scheduler/ and fmri_encoder/."
            )

    vae = diffusers.AutoencoderKL.from_pretrained(authors / "vae").eval()
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    scheduler_file = authors / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file():
        raise UserError(f"{scheduler_file} is missing; the authors' scheduler/ is incomplete.")
    scheduler_name = read_json_object(scheduler_file).get("_class_name", "DDIMScheduler")
    scheduler_cls = MindVideoPipeline.component_class(
        "scheduler", scheduler_name, str(scheduler_file)
    )
    scheduler = scheduler_cls.from_pretrained(authors / "scheduler")
    scheduler_notes = []
    if getattr(scheduler.config, "clip_sample", False):
        # Their pipeline switched clipping off at load time (x0 is a latent, not an image).
        scheduler.register_to_config(clip_sample=False)
        scheduler_notes.append("clip_sample set to False, as the authors' pipeline does")
    offset = scheduler.config.get("steps_offset")
    if offset is not None and offset != 1:
        # Their pipeline's __init__ forces steps_offset = 1 on whatever scheduler was saved: the
        # timesteps it samples at are one later than the saved config's.
        scheduler.register_to_config(steps_offset=1)
        scheduler_notes.append(
            f"steps_offset set to 1 (was {offset}), as the authors' pipeline does"
        )
    unet, unet_report = _unet_from_authors(authors, resolution, vae_scale_factor, strict)
    encoder, encoder_report = encoder_from_authors(authors, strict)

    pipe = MindVideoPipeline(
        vae=vae,
        unet=unet,
        fmri_encoder=encoder,
        scheduler=scheduler,
        frames_per_tr=frames_per_tr,
        fmri_pad_mode="wrap_compat",  # their pad_to_patch_size wraps the first voxels around
        # Their normalize(): one mean/std over the training fMRI; their evaluation leaves the
        # test fMRI as it is (create_Wen_test_data_only: mean 0, std 1).
        fmri_normalize="compat",
    )
    report = PipelineConversionReport(
        authors=str(authors),
        out=str(out),
        unet=unet_report,
        fmri_encoder=asdict(encoder_report),
        vae={"class": type(vae).__name__, "source": str(authors / "vae")},
        scheduler={
            "class": scheduler_name,
            "source": str(scheduler_file),
            "notes": scheduler_notes,
        },
        pipeline={
            "frames_per_tr": frames_per_tr,
            "fmri_pad_mode": "wrap_compat",
            "fmri_normalize": "compat",
            "resolution": unet.config.sample_size * vae_scale_factor,
        },
    )
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp)
        (tmp / "conversion.json").write_text(report.to_json())
    logger.info("converted the authors' pipeline %s into %s", authors, out)
    return report


#: What the authors' released evaluation (``scripts/eval_all.py`` with ``eval_all_sub*.yaml``)
#: samples with, as ``ReconstructConfig`` values: the saved scheduler (``steps_offset=1``),
#: 200 steps, guidance 12.5, 2-TR windows, the mean test fMRI as the negative condition.
AUTHORS_EVAL = {
    "scheduler": None,
    "num_inference_steps": 200,
    "guidance_scale": 12.5,
    "window": 2,
    "negative": "mean-test",
}


def authors_settings_note(cfg: Any, pipe: MindVideoPipeline, checkpoint: Path) -> str | None:
    """For a pipeline folder written by ``mindvideo convert`` (it holds ``conversion.json``):
    one log paragraph saying that reconstruction follows the authors' evaluation and naming any
    setting of ``cfg`` (a ``ReconstructConfig``) that departs from it; ``None`` for other
    folders."""
    if not (checkpoint / "conversion.json").is_file():
        return None
    differ = [
        f"{key}={getattr(cfg, key)!r} (theirs: {value!r})"
        for key, value in AUTHORS_EVAL.items()
        if getattr(cfg, key) != value
    ]
    normalize = pipe.config.fmri_normalize
    if normalize != "compat":
        differ.append(f"fmri_normalize={normalize!r} (theirs: 'compat', an older conversion)")
    text = (
        f"{checkpoint} is a converted authors' checkpoint: sampling as their released evaluation "
        "does (their saved scheduler with steps_offset=1, 200 steps, guidance 12.5, 2-TR "
        "windows, voxels wrap-padded, the training fMRI normalised with one mean and standard "
        "deviation and the test fMRI left as it is, the mean test fMRI as the negative)"
    )
    if differ:
        return f"{text}, except: {'; '.join(differ)}."
    return f"{text}."
