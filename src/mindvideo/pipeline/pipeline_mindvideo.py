"""MinD-Video's reconstruction pipeline: fMRI windows → videos (paper 3.4, B "Inference").

A diffusers ``DiffusionPipeline`` with four components — ``vae`` (Stable Diffusion's
``AutoencoderKL``), ``unet`` (:class:`~mindvideo.generator.VideoUNet`), ``fmri_encoder``
(:class:`~mindvideo.encoder.SpatiotemporalEncoder`) and ``scheduler`` (any diffusers scheduler) —
saved as a pipeline folder (``model_index.json``, ``vae/``, ``unet/``, ``fmri_encoder/``,
``scheduler/``)::

    pipe = MindVideoPipeline.from_pretrained("runs/cotrain/pipeline")
    video = pipe(fmri, negative_fmri=mean_test_window, generator=torch.Generator().manual_seed(0))
    video.frames                       # uint8 [N, 6, 256, 256, 3]

``__call__`` reads as numbered steps: check inputs, encode the condition (positive and negative),
prepare timesteps, prepare latents, denoise with adversarial guidance (eq. 6) — both branches in
one batched UNet call — decode, return.

The condition may also be given directly as tokens, ``pipe(prompt_embeds=..., ...)`` with
``[N, 77, d]`` (e.g. a caption through the text encoder: the oracle of ``mindvideo reconstruct
condition=caption``); everything after step 2 is the same.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from mindvideo.encoder.spatiotemporal import SpatiotemporalEncoder
from mindvideo.generator.unet import VideoUNet
from mindvideo.pipeline.guidance import adversarial_guidance, null_condition
from mindvideo.pipeline.output import MindVideoPipelineOutput
from mindvideo.utils import UserError
from mindvideo.utils.base_folder import component_dir, write_base
from mindvideo.utils.io import follow_umask
from mindvideo.utils.threads import adapt_threads

__all__ = ["MindVideoPipeline", "steps_from_video"]

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("np", "pt", "latent")


def steps_from_video(num_inference_steps: int, strength: float) -> int:
    """The denoising steps a start video at ``strength`` leaves of ``num_inference_steps``:
    ``int(steps × strength)``, as diffusers' video-to-video pipelines count them (0: none)."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if torch.is_tensor(x):
        return x
    raise UserError(f"{name} must be a torch tensor or numpy array, not {type(x).__name__}.")


class MindVideoPipeline(DiffusionPipeline):
    """Reconstruct videos from fMRI windows with adversarial guidance (paper 3.4, eq. 6).

    Args:
        vae: Stable Diffusion's ``AutoencoderKL`` (frozen in training).
        unet: the inflated video UNet.
        fmri_encoder: the spatiotemporal fMRI encoder; its ``[N, 77, d]`` tokens replace the text
            embedding.
        scheduler: any diffusers scheduler (the paper: DDIM, 200 steps; see
            :func:`~mindvideo.pipeline.make_scheduler`).
        frames_per_tr: frames generated per fMRI condition (6: 3 FPS × 2 s TR).
        fmri_pad_mode: how the fMRI voxels were padded to the encoder's patch size in training
            (``"zero"``; ``"wrap_compat"`` for the authors' checkpoints). The pipeline takes
            padded fMRI; this records how to pad (``mindvideo.data.pairing.pad_voxels``).
        fmri_normalize: the fMRI normalisation used in training (``FMRINormalizer`` mode).

    The three settings are stored in ``model_index.json`` with the components.
    """

    model_cpu_offload_seq = "fmri_encoder->unet->vae"
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents", "noise_pred"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: VideoUNet,
        fmri_encoder: SpatiotemporalEncoder,
        scheduler: SchedulerMixin,
        frames_per_tr: int = 6,
        fmri_pad_mode: str = "zero",
        fmri_normalize: str = "train",
    ):
        super().__init__()
        cond_dim, cross_dim = fmri_encoder.config.cond_dim, unet.config.cross_attention_dim
        if cond_dim != cross_dim:
            raise UserError(
                f"The fMRI encoder's conditioning width (cond_dim = {cond_dim}) differs from the "
                f"UNet's cross_attention_dim ({cross_dim}); "
                "build the encoder with cond_dim equal to the UNet's cross_attention_dim."
            )
        self.register_modules(vae=vae, unet=unet, fmri_encoder=fmri_encoder, scheduler=scheduler)
        self.register_to_config(
            frames_per_tr=frames_per_tr, fmri_pad_mode=fmri_pad_mode, fmri_normalize=fmri_normalize
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, with every file given the user's umask (the weights
        are otherwise private, ``0600``, in a folder others may read)."""
        super().save_pretrained(save_directory, **kwargs)
        follow_umask(save_directory)

    def save_light(
        self, save_directory: str | os.PathLike, base: str | os.PathLike, unet_keys: Any
    ) -> None:
        """Save what was trained, by reference to the Stable Diffusion folder ``base``:
        ``model_index.json``, ``fmri_encoder/`` and ``scheduler/`` in full, ``unet/`` light
        (the tensors ``unet_keys``, :meth:`VideoUNet.save_trained`), no ``vae/`` (``base.json``
        names where it is). :meth:`from_pretrained` loads it like a standalone folder, and
        ``mindvideo export`` writes one."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        self.fmri_encoder.save_pretrained(folder / "fmri_encoder")
        self.scheduler.save_pretrained(folder / "scheduler")
        self.unet.save_trained(folder / "unet", base, unet_keys)
        write_base(folder, base, ["vae"])
        follow_umask(folder)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> MindVideoPipeline:
        """Load a pipeline folder written by :meth:`save_pretrained`.

        ``model_index.json`` names ``unet`` and ``fmri_encoder`` by their defining modules
        (``mindvideo.generator.unet``, ``mindvideo.encoder.spatiotemporal``), which diffusers'
        generic loader only accepts from modules exposing a diffusers base class. The components
        are therefore loaded here, each with its own ``from_pretrained`` (safetensors, no remote
        code, no network for a local folder); a hub id is downloaded first.

        Keyword arguments: ``torch_dtype`` (for the models), a component to use instead of the
        saved one (``scheduler=...``), a pipeline setting (``frames_per_tr=...``), or
        ``empty_weights=True`` (the models built from their configs on the meta device, without
        weights: a dry run); anything else goes to ``DiffusionPipeline.download`` for hub ids.
        """
        path = os.fspath(pretrained_model_name_or_path)
        components = {k: kwargs.pop(k) for k in cls._component_names() if k in kwargs}
        settings = {k: kwargs.pop(k) for k in cls._setting_names() if k in kwargs}
        torch_dtype = kwargs.pop("torch_dtype", None)
        empty_weights = bool(kwargs.pop("empty_weights", False))
        if not os.path.isdir(path):
            path = cls.download(path, **kwargs)
        index_file = os.path.join(path, "model_index.json")
        if not os.path.isfile(index_file):
            raise UserError(
                f"{path} has no model_index.json, so it is not a pipeline folder; pass the folder "
                "written by `mindvideo cotrain` or `mindvideo convert`."
            )
        with open(index_file, encoding="utf-8") as f:
            index = json.load(f)
        for name in cls._component_names():
            if name in components:
                continue
            entry = index.get(name)
            if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
                raise UserError(
                    f"{index_file} names no {name} component; the folder is incomplete."
                )
            component_cls = cls.component_class(name, entry[1], index_file)
            load_kwargs = {}
            if torch_dtype is not None and issubclass(component_cls, torch.nn.Module):
                load_kwargs["torch_dtype"] = torch_dtype
            try:  # a light folder reads the frozen parts from its base Stable Diffusion
                where = str(component_dir(path, name).parent)
            except UserError as exc:
                raise UserError(
                    f"The pipeline folder {path} has no {name}/ folder; it is incomplete."
                ) from exc
            if empty_weights and issubclass(component_cls, torch.nn.Module):
                from mindvideo.utils.dry_run import empty_model

                components[name] = empty_model(component_cls, where, name)
                continue
            components[name] = component_cls.from_pretrained(where, subfolder=name, **load_kwargs)
        for key in cls._setting_names():
            if key not in settings and key in index:
                settings[key] = index[key]
        for name in ("vae", "unet", "fmri_encoder"):
            components[name].eval()
        return cls(**components, **settings)

    @staticmethod
    def _component_names() -> tuple[str, ...]:
        return ("vae", "unet", "fmri_encoder", "scheduler")

    @classmethod
    def _setting_names(cls) -> tuple[str, ...]:
        params = inspect.signature(cls.__init__).parameters
        return tuple(k for k in params if k not in ("self", *cls._component_names()))

    @staticmethod
    def component_class(name: str, class_name: str, index_file: str) -> type:
        """The class a ``model_index.json`` entry names: ours, or a diffusers model/scheduler."""
        import diffusers

        ours = {"unet": VideoUNet, "fmri_encoder": SpatiotemporalEncoder}
        if name in ours:
            if class_name != ours[name].__name__:
                raise UserError(
                    f"{index_file} has a {class_name} as {name}, not a {ours[name].__name__}: this "
                    "looks like the authors' released pipeline; convert it first with "
                    "`mindvideo convert --authors DIR --out NEW_DIR`."
                )
            return ours[name]
        component_cls = getattr(diffusers, class_name, None)
        base = SchedulerMixin if name == "scheduler" else diffusers.ModelMixin
        if not (isinstance(component_cls, type) and issubclass(component_cls, base)):
            raise UserError(
                f"{index_file} names {class_name!r} as {name}, which is not a diffusers "
                f"{base.__name__}; fix model_index.json."
            )
        return component_cls

    # ------------------------------------------------------------------ properties
    @property
    def num_voxels(self) -> int:
        """V, the (padded) voxels per TR the fMRI encoder takes."""
        return int(self.fmri_encoder.config.num_voxels)

    @property
    def window(self) -> int:
        """w, the TRs per fMRI window the encoder's head was trained on (paper: 2)."""
        return int(self.fmri_encoder.config.window)

    @property
    def default_size(self) -> int:
        """Default height and width: the UNet's ``sample_size`` × the VAE scale factor."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    # ------------------------------------------------------------------ step 1
    def check_inputs(
        self,
        fmri: Any,
        negative_fmri: Any,
        negative_embeddings: Any,
        num_frames: int | None,
        height: int,
        width: int,
        output_type: str,
        generator: torch.Generator | list[torch.Generator] | None,
        prompt_embeds: Any = None,
    ) -> tuple[
        torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int
    ]:
        """Validate the inputs; return ``fmri [N, W, V]`` (or None), ``prompt_embeds
        [N, S, 77, d]`` (or None), the negative as fMRI ``[1|N, w', V]`` or embeddings
        ``[1|N, 77, d]``, and the number of frames. Mistakes are :class:`UserError`."""
        if (fmri is None) == (prompt_embeds is None):
            raise UserError(
                "Pass the condition as fmri (fMRI windows [N, w, V]) or as prompt_embeds "
                "(condition tokens [N, 77, d]): exactly one of them."
            )
        if fmri is not None:
            fmri = self._check_fmri(_as_tensor(fmri, "fmri"), "fmri")
            n, w_in = fmri.shape[:2]
            conditions = self._check_fmri_window(w_in)
        else:
            prompt_embeds = self._check_prompt_embeds(prompt_embeds)
            n, conditions = prompt_embeds.shape[:2]
            if negative_fmri is not None:
                raise UserError(
                    "With prompt_embeds pass the negative condition as negative_embeddings "
                    "(tokens [77, d]), not as negative_fmri."
                )
        if num_frames is None:
            num_frames = self.config.frames_per_tr * conditions
        if num_frames < conditions or num_frames % conditions:
            source = (
                f"a {fmri.shape[1]}-TR window gives (one per sub-window of {self.window} TRs)"
                if fmri is not None
                else "of prompt_embeds [N, S, 77, d] (S)"
            )
            raise UserError(
                f"num_frames = {num_frames} must be a positive multiple of the {conditions} "
                f"conditions {source}."
            )
        if negative_fmri is not None and negative_embeddings is not None:
            raise UserError("Pass negative_fmri or negative_embeddings, not both.")
        if negative_fmri is not None:
            negative_fmri = self._check_fmri(
                _as_tensor(negative_fmri, "negative_fmri"), "negative_fmri"
            )
            if negative_fmri.shape[0] not in (1, n) or negative_fmri.shape[1] not in (
                self.window,
                w_in,
            ):
                raise UserError(
                    f"negative_fmri must be [{self.window}, V], [1, {self.window}, V] or "
                    f"[{n}, {self.window} or {w_in}, V] for fMRI of shape {list(fmri.shape)}; got "
                    f"{list(negative_fmri.shape)}."
                )
        if negative_embeddings is not None:
            negative_embeddings = _as_tensor(negative_embeddings, "negative_embeddings")
            if negative_embeddings.ndim == 2:
                negative_embeddings = negative_embeddings[None]
            tokens, dim = self.fmri_encoder.config.out_tokens, self.fmri_encoder.config.cond_dim
            if negative_embeddings.ndim != 3 or tuple(negative_embeddings.shape) not in (
                (1, tokens, dim),
                (n, tokens, dim),
            ):
                raise UserError(
                    f"negative_embeddings must be [{tokens}, {dim}], [1, {tokens}, {dim}] or "
                    f"[{n}, {tokens}, {dim}]; got {list(negative_embeddings.shape)}."
                )
        multiple = self.vae_scale_factor
        if height < multiple or width < multiple or height % multiple or width % multiple:
            raise UserError(
                f"height and width must be positive multiples of the VAE scale factor {multiple}; "
                f"got {height} x {width}."
            )
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type must be one of {OUTPUT_TYPES}, not {output_type!r}.")
        if isinstance(generator, list) and len(generator) != n:
            raise UserError(
                f"A list of generators needs one per fMRI window (per video): got "
                f"{len(generator)} for {n}."
            )
        return fmri, prompt_embeds, negative_fmri, negative_embeddings, num_frames

    def _check_fmri_window(self, w_in: int) -> int:
        """The number of conditions ``W − w + 1`` a ``W``-TR window gives (checked)."""
        max_window = int(self.fmri_encoder.config.max_window)
        if not self.window <= w_in <= max_window:
            raise UserError(
                f"The fMRI windows have {w_in} TRs, but this encoder takes windows of "
                f"{self.window} TRs (6 frames) up to max_window = {max_window} TRs (longer "
                f"videos); pass fMRI of shape [N, {self.window}..{max_window}, {self.num_voxels}]."
            )
        return w_in - self.window + 1

    def _check_prompt_embeds(self, prompt_embeds: Any) -> torch.Tensor:
        """``[77, d]``, ``[N, 77, d]`` or ``[N, S, 77, d]`` → float ``[N, S, 77, d]``, with the
        encoder's token count, the UNet's cross-attention width and finite values."""
        embeds = _as_tensor(prompt_embeds, "prompt_embeds")
        if embeds.ndim in (2, 3):
            embeds = embeds[None] if embeds.ndim == 2 else embeds
            embeds = embeds[:, None]  # one condition per video
        tokens = int(self.fmri_encoder.config.out_tokens)
        dim = int(self.unet.config.cross_attention_dim)
        if (
            embeds.ndim != 4
            or min(embeds.shape[:2]) < 1
            or tuple(embeds.shape[2:])
            != (
                tokens,
                dim,
            )
        ):
            raise UserError(
                f"prompt_embeds must be condition tokens [N, {tokens}, {dim}] (or [{tokens}, "
                f"{dim}], or [N, S, {tokens}, {dim}] for S conditions per video: {tokens} tokens "
                f"of the UNet's cross_attention_dim {dim}); got {list(prompt_embeds.shape)}."
            )
        if not embeds.dtype.is_floating_point:
            raise UserError(f"prompt_embeds must be floating point, not {embeds.dtype}.")
        bad = int((~torch.isfinite(embeds)).sum())
        if bad:
            raise UserError(f"prompt_embeds contains {bad} NaN or infinite values.")
        return embeds

    def _check_fmri(self, fmri: torch.Tensor, name: str) -> torch.Tensor:
        """``[W, V]`` or ``[N, W, V]`` → float ``[N, W, V]``; V and finiteness checked."""
        if fmri.ndim == 2:
            fmri = fmri[None]
        if fmri.ndim != 3 or fmri.shape[0] < 1:
            raise UserError(
                f"{name} must be fMRI windows [N, w, V] (or one window [w, V]); got shape "
                f"{list(fmri.shape)}."
            )
        if fmri.shape[-1] != self.num_voxels:
            raise UserError(
                f"{name} has {fmri.shape[-1]} voxels per TR but the pipeline's fMRI encoder "
                f"expects {self.num_voxels} (num_voxels in fmri_encoder/config.json); pad the ROI "
                f"voxels with mindvideo.data.pairing.pad_voxels(fmri, "
                f"{self.fmri_encoder.config.patch_size}, {self.config.fmri_pad_mode!r}), or use "
                "the checkpoint trained on this subject's ROI."
            )
        if not fmri.dtype.is_floating_point:
            fmri = fmri.float()
        bad = int((~torch.isfinite(fmri)).sum())
        if bad:
            raise UserError(
                f"{name} contains {bad} NaN or infinite values; fix the fMRI (e.g. re-run "
                "`mindvideo prepare` with nan_policy=zero)."
            )
        return fmri

    # ------------------------------------------------------------------ step 2
    def encode_fmri(self, fmri: torch.Tensor) -> torch.Tensor:
        """fMRI windows ``[N, W, V]`` → conditions ``[N, W − w + 1, 77, d]``.

        A window of the trained size ``w`` gives one condition; a longer window gives one per
        sub-window of ``w`` TRs (:meth:`SpatiotemporalEncoder.forward_sliding`), temporal attention
        seeing all ``W`` TRs.
        """
        encoder = self.fmri_encoder
        fmri = fmri.to(self._execution_device, encoder.dtype)
        if fmri.shape[1] == self.window:
            return encoder(fmri).embeddings[:, None]  # [N, 1, 77, d]
        return encoder.forward_sliding(fmri)  # [N, S, 77, d]

    def encode_negative(
        self,
        batch: int,
        negative_fmri: torch.Tensor | None = None,
        negative_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The negative condition c̄ ``[batch, S', 77, d]`` (``S'`` = 1, or one per sub-window).

        ``negative_fmri`` is encoded like the fMRI; ``negative_embeddings`` is used as is;
        neither gives the null condition (zeros, eq. 5). One negative is shared by the batch.
        """
        c = self.fmri_encoder.config
        device, dtype = self._execution_device, self.fmri_encoder.dtype
        if negative_fmri is not None:
            negative = self.encode_fmri(negative_fmri)
        elif negative_embeddings is not None:
            negative = negative_embeddings.to(device, dtype)[:, None]
        else:
            negative = null_condition(1, c.out_tokens, c.cond_dim, dtype, device)[:, None]
        return negative.expand(batch, *negative.shape[1:])

    @staticmethod
    def condition_per_frame(condition: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``[N, S, 77, d]`` → the UNet's ``encoder_hidden_states``: ``[N, 77, d]`` when S = 1
        (every frame shares it), else ``[N, F, 77, d]`` with frames ``s·F/S … (s+1)·F/S − 1``
        conditioned on sub-window ``s``."""
        if condition.shape[1] == 1:
            return condition[:, 0]
        return condition.repeat_interleave(num_frames // condition.shape[1], dim=1)

    # ------------------------------------------------------------------ step 4
    def prepare_latents(
        self,
        batch: int,
        num_frames: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial noise ``[N, C, F, h, w]`` scaled by the scheduler's ``init_noise_sigma``.

        With a list of generators, window ``i``'s noise comes from ``generator[i]`` alone, so a
        window's video does not depend on the other windows in the batch.
        """
        shape = (
            batch,
            self.unet.config.in_channels,
            num_frames,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise UserError(f"latents must have shape {list(shape)}, got {list(latents.shape)}.")
        else:
            latents = latents.to(device, dtype)
        return latents * self.scheduler.init_noise_sigma

    def _extra_step_kwargs(
        self, generator: torch.Generator | list[torch.Generator] | None, eta: float
    ) -> dict[str, Any]:
        """``eta`` (DDIM) and ``generator`` for schedulers whose ``step`` takes them."""
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra: dict[str, Any] = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    # ------------------------------------------------------------------ step 5
    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor,
        negative: torch.Tensor | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """The guided noise estimate ε̂ (eq. 6) for one denoising step.

        latents: ``[N, C, F, h, w]``; condition / negative: ``[N, 77, d]`` or ``[N, F, 77, d]``.
        With a negative, both branches run in ONE UNet call on the batch ``[c̄; c]`` (``2N``
        videos) and are combined by :func:`adversarial_guidance`; with ``negative=None``, one
        conditional call. Returns ``[N, C, F, h, w]`` in the latents' dtype.
        """
        unet_dtype = self.unet.dtype
        if negative is None:
            model_input = self.scheduler.scale_model_input(latents, t).to(unet_dtype)
            noise = self.unet(model_input, t, condition.to(unet_dtype)).sample
            return noise.to(latents.dtype)
        model_input = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
        states = torch.cat([negative, condition]).to(unet_dtype)  # [2N, ...]
        noise = self.unet(model_input.to(unet_dtype), t, states).sample.to(latents.dtype)
        noise_neg, noise_pos = noise.chunk(2)
        return adversarial_guidance(noise_pos, noise_neg, guidance_scale)

    # ------------------------------------------------------------------ step 6
    # ------------------------------------------------------------------ step 4, from a video
    def encode_video(
        self, video: Any, batch: int, num_frames: int, height: int, width: int
    ) -> torch.Tensor:
        """A start video → its VAE latents ``[N, C, F, h, w]`` (scaled as the UNet's).

        ``video``: uint8 ``[N, F, H', W', 3]`` or float ``[N, F, 3, H', W']`` in ``[0, 1]``
        (numpy or torch), any ``H' × W'``: frames are resized to ``height × width``
        (bicubic, clamped to ``[0, 1]``) — a low-resolution video decoded from the fMRI, for
        instance. The VAE's
        posterior mean is used, so the start does not depend on a generator.
        """
        x = _as_tensor(video, "video")
        if x.dtype == torch.uint8 and x.ndim == 5 and x.shape[-1] == 3:
            x = x.permute(0, 1, 4, 2, 3).float() / 255.0
        if x.ndim != 5 or x.shape[2] != 3 or not x.is_floating_point():
            raise UserError(
                "video must be uint8 [N, F, H, W, 3] or float [N, F, 3, H, W] in [0, 1], not "
                f"{x.dtype} {list(x.shape)}."
            )
        if tuple(x.shape[:2]) != (batch, num_frames):
            raise UserError(
                f"video has {x.shape[0]} clips of {x.shape[1]} frames; the call makes {batch} "
                f"of {num_frames}."
            )
        device, dtype = self._execution_device, self.vae.dtype
        frames = x.flatten(0, 1).to(device, torch.float32)
        if tuple(frames.shape[-2:]) != (height, width):
            # Bicubic keeps more of a low-resolution video's layout than bilinear, which blurs
            # it (clamped: the cubic kernel overshoots at edges).
            frames = torch.nn.functional.interpolate(
                frames, size=(height, width), mode="bicubic", align_corners=False
            ).clamp(0, 1)
        latents = self.vae.encode((frames * 2 - 1).to(dtype)).latent_dist.mean
        latents = latents * self.vae.config.scaling_factor
        return latents.unflatten(0, (batch, num_frames)).transpose(1, 2)

    def encode_keyframe(self, keyframe: Any, batch: int, height: int, width: int) -> torch.Tensor:
        """A keyframe per video → its VAE latents ``[N, C, h, w]`` (scaled as the UNet's).

        ``keyframe``: uint8 ``[N, H', W', 3]`` or float ``[N, 3, H', W']`` in ``[0, 1]`` (numpy
        or torch), any ``H' × W'``, resized as :meth:`encode_video` resizes a start video.
        """
        x = _as_tensor(keyframe, "keyframe")
        uint8 = x.dtype == torch.uint8 and x.ndim == 4 and x.shape[-1] == 3
        floats = x.is_floating_point() and x.ndim == 4 and x.shape[1] == 3
        if not (uint8 or floats):
            raise UserError(
                "keyframe must be uint8 [N, H, W, 3] or float [N, 3, H, W] in [0, 1] (one image "
                f"per video), not {x.dtype} {list(x.shape)}."
            )
        if x.shape[0] != batch:
            raise UserError(f"keyframe has {x.shape[0]} images; the call makes {batch} videos.")
        return self.encode_video(x[:, None], batch, 1, height, width)[:, :, 0]

    def hold_keyframe(
        self,
        latents: torch.Tensor,
        keyframe: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor | None,
    ) -> torch.Tensor:
        """The replacement method (Ho et al. 2022, *Video Diffusion Models*): the first frame's
        latents become the keyframe's noised to timestep ``t`` with the window's own ``noise``
        (``None``: after the last step, the keyframe's latents themselves); the other frames
        read it through the UNet's attention to the first frame. Called, as diffusers'
        inpainting pipelines call ``add_noise``, before the first step and after each step
        with the next step's timestep."""
        held = keyframe
        if t is not None:
            held = self.scheduler.add_noise(keyframe, noise, t.reshape(1).repeat(len(keyframe)))
        latents = latents.clone()
        latents[:, :, 0] = held.to(latents.dtype)
        return latents

    def start_from_video(
        self,
        video_latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        num_inference_steps: int,
        strength: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SDEdit: keep the last ``strength`` of the schedule and noise the video's latents to
        its first timestep (as diffusers' video-to-video pipelines do). Returns ``(latents,
        timesteps)``. ``noise`` is unit-variance noise of the latents' shape."""
        if not 0.0 < strength <= 1.0:
            raise UserError(f"strength must be in (0, 1], not {strength}.")
        steps = steps_from_video(num_inference_steps, strength)
        if steps < 1:
            raise UserError(
                f"strength {strength} of {num_inference_steps} steps leaves no denoising step; "
                "raise the strength or the number of steps."
            )
        order = getattr(self.scheduler, "order", 1)
        timesteps = timesteps[(num_inference_steps - steps) * order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index((num_inference_steps - steps) * order)
        first = timesteps[:1].repeat(video_latents.shape[0])
        latents = self.scheduler.add_noise(video_latents, noise.to(video_latents.dtype), first)
        return latents, timesteps

    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
        """Latents ``[N, C, F, h, w]`` → frames ``[N, F, 3, H, W]`` float32 in ``[0, 1]``.

        Frames are decoded ``chunk_size`` at a time (the VAE decoder is the memory peak at
        256² and above).
        """
        n, _, f = latents.shape[:3]
        flat = (
            latents.transpose(1, 2).flatten(0, 1) / self.vae.config.scaling_factor
        )  # [N·F, C, h, w]
        flat = flat.to(self.vae.dtype)
        images = [
            self.vae.decode(flat[i : i + chunk_size]).sample.float()
            for i in range(0, flat.shape[0], max(1, chunk_size))
        ]
        video = torch.cat(images).unflatten(0, (n, f))  # [N, F, 3, H, W]
        return (video / 2 + 0.5).clamp(0, 1)

    @staticmethod
    def to_uint8(video: torch.Tensor) -> np.ndarray:
        """``[N, F, 3, H, W]`` in ``[0, 1]`` → uint8 ``[N, F, H, W, 3]``."""
        return (video.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8).cpu().numpy()

    # ------------------------------------------------------------------ __call__
    @torch.no_grad()
    def __call__(
        self,
        fmri: torch.Tensor | np.ndarray | None = None,
        negative_fmri: torch.Tensor | np.ndarray | None = None,
        negative_embeddings: torch.Tensor | None = None,
        guidance_scale: float = 12.5,
        num_inference_steps: int = 200,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        decode_chunk_size: int = 8,
        prompt_embeds: torch.Tensor | np.ndarray | None = None,
        video: torch.Tensor | np.ndarray | None = None,
        strength: float = 0.8,
        keyframe: torch.Tensor | np.ndarray | None = None,
    ) -> MindVideoPipelineOutput | tuple:
        """Reconstruct one video per fMRI window (or per given condition, ``prompt_embeds``).

        Args:
            fmri: ``[N, W, V]`` fMRI windows (or one ``[W, V]``), normalised and padded as in
                training (``V`` = the encoder's ``num_voxels``). ``W = w`` (the trained window)
                gives ``frames_per_tr`` frames; a longer window (``w < W ≤ max_window``) gives
                ``frames_per_tr`` frames for each of its ``W − w + 1`` sub-windows, in one video.
            negative_fmri: the negative condition c̄ as fMRI: ``[w, V]``, ``[1, w, V]`` or
                ``[N, w or W, V]`` — the paper uses the mean test fMRI
                (:func:`~mindvideo.pipeline.mean_fmri_window`).
            negative_embeddings: c̄ as encoder tokens ``[77, d]`` or ``[1 or N, 77, d]``.
                Neither: the null condition (zeros) — plain classifier-free guidance (eq. 5).
            guidance_scale: s in eq. 6 (paper 12.5); ``≤ 1`` disables guidance (one UNet branch,
                the negative is ignored).
            num_inference_steps: sampler steps (paper: 200 DDIM steps).
            num_frames: frames per video; default ``frames_per_tr × (W − w + 1)``.
            height, width: output size; default the UNet's ``sample_size`` × VAE scale factor.
            eta: DDIM's η (0: deterministic).
            generator: a ``torch.Generator`` or one per window (window ``i`` then depends only on
                ``generator[i]``).
            latents: initial noise ``[N, 4, F, h, w]`` instead of drawing it.
            output_type: ``"np"`` (uint8 ``[N, F, H, W, 3]``), ``"pt"`` (float ``[N, F, 3, H, W]``
                in [0, 1]) or ``"latent"`` (``[N, 4, F, h, w]``).
            return_dict: return a :class:`MindVideoPipelineOutput`, else ``(frames,)``.
            callback_on_step_end: ``f(pipe, i, t, {"latents", "noise_pred"}) → dict`` after each
                step; a returned ``"latents"`` replaces the latents.
            decode_chunk_size: frames per VAE decoder call.
            prompt_embeds: the condition c itself instead of ``fmri`` (pass ``fmri=None``):
                tokens ``[N, 77, d]`` (or one ``[77, d]``), ``d`` the UNet's
                ``cross_attention_dim``, or ``[N, S, 77, d]`` for ``S`` conditions per video as a
                longer fMRI window gives. E.g. a caption's text embedding, the condition a perfect
                fMRI encoder would give (``mindvideo reconstruct condition=caption``). The
                negative then goes as ``negative_embeddings`` (or none: the null condition).
            video: a start video (SDEdit, as diffusers' video-to-video pipelines take one):
                uint8 ``[N, F, H', W', 3]`` or float ``[N, F, 3, H', W']`` in ``[0, 1]``, resized
                to ``height × width``; its VAE latents are noised to the step ``strength`` of the
                way back and denoised from there — e.g. a low-resolution video decoded from the
                fMRI, which then sets the layout and colours. ``None`` (default): sampling starts
                from noise, the paper's method, unchanged.
            strength: with ``video``, the fraction of the ``num_inference_steps`` steps run
                (``1`` starts from the video noised to the first timestep, almost pure noise;
                small values keep it close to the video).
            keyframe: a first frame per video that the sampler keeps (a keyframe condition):
                uint8 ``[N, H', W', 3]`` or float ``[N, 3, H', W']`` in ``[0, 1]``, resized to
                ``height × width``. Before every step the first frame's latents are replaced by
                the keyframe's VAE latents noised to that step (:meth:`hold_keyframe`), and the
                clip ends on the keyframe's VAE round trip; the other frames follow it through
                the attention to the first frame. With or without ``video`` — e.g. the first
                frame of the low-level video. ``None`` (default): no keyframe.
        """
        # 1. Check inputs
        height = height or self.default_size
        width = width or self.default_size
        fmri, prompt_embeds, negative_fmri, negative_embeddings, num_frames = self.check_inputs(
            fmri,
            negative_fmri,
            negative_embeddings,
            num_frames,
            height,
            width,
            output_type,
            generator,
            prompt_embeds,
        )
        device = self._execution_device
        do_guidance = guidance_scale > 1.0

        # 2. Encode the condition c (or take it as given) and the negative condition c̄
        if fmri is not None:
            condition = self.encode_fmri(fmri)  # [N, S, 77, d]
        else:
            condition = prompt_embeds.to(device, self.fmri_encoder.dtype)  # [N, S, 77, d]
        batch = condition.shape[0]
        negative = None
        if do_guidance:
            negative = self.encode_negative(batch, negative_fmri, negative_embeddings)
            if negative.shape[1] != condition.shape[1]:  # one c̄ for every sub-window
                negative = negative[:, :1].expand_as(condition)
            negative = self.condition_per_frame(negative, num_frames)
        condition = self.condition_per_frame(condition, num_frames)  # [N, (F,) 77, d]

        # 3. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 4. Prepare latents [N, 4, F, h, w]
        latents_dtype = self.unet.dtype if self.unet.dtype != torch.float64 else torch.float32
        latents = self.prepare_latents(
            batch, num_frames, height, width, latents_dtype, device, generator, latents
        )
        noise = latents / self.scheduler.init_noise_sigma
        key = None
        if keyframe is not None:
            key = self.encode_keyframe(keyframe, batch, height, width).to(latents_dtype)
        if video is not None:  # SDEdit: start part-way, from the video noised to that step
            start = self.encode_video(video, batch, num_frames, height, width).to(latents_dtype)
            latents, timesteps = self.start_from_video(
                start, noise, timesteps, num_inference_steps, strength
            )
        if key is not None:
            latents = self.hold_keyframe(latents, key, noise[:, :, 0], timesteps[0])
        extra_step_kwargs = self._extra_step_kwargs(generator, eta)

        # 5. Denoising loop with adversarial guidance (eq. 6)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                adapt_threads()  # another job may have started or ended (CPU only)
                noise_pred = self.predict_noise(latents, t, condition, negative, guidance_scale)
                latents = self.scheduler.step(
                    noise_pred, t, latents, **extra_step_kwargs, return_dict=False
                )[0]
                if key is not None:
                    later = timesteps[i + 1] if i + 1 < len(timesteps) else None
                    latents = self.hold_keyframe(latents, key, noise[:, :, 0], later)
                if callback_on_step_end is not None:
                    out = callback_on_step_end(
                        self, i, t, {"latents": latents, "noise_pred": noise_pred}
                    )
                    latents = (out or {}).get("latents", latents)
                progress.update()

        # 6. Decode with the VAE
        if output_type == "latent":
            frames: torch.Tensor | np.ndarray = latents
        else:
            video = self.decode_latents(latents, decode_chunk_size)  # [N, F, 3, H, W]
            frames = self.to_uint8(video) if output_type == "np" else video

        # 7. Return
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return MindVideoPipelineOutput(frames=frames)
