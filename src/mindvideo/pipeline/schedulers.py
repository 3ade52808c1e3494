"""Samplers by name: any diffusers scheduler, built from the pipeline's scheduler config.

The paper samples with 200 DDIM steps (B, "Inference"). A pipeline folder's ``scheduler/`` holds
the noise schedule the model was trained with (Stable Diffusion's ``scaled_linear`` betas,
1000 training steps); every sampler here is built ``from_config`` of that schedule, so only the
sampling algorithm changes. DPM-Solver++ (2nd order, multistep) reaches comparable quality in
about 25 steps — 8× fewer UNet evaluations than the paper's setting.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from diffusers import SchedulerMixin

from mindvideo.utils import UserError

__all__ = ["SCHEDULERS", "describe_sampler", "make_scheduler", "sampler_for"]

#: Short names → (diffusers class name, settings applied on top of the pipeline's config).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm-solver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}


def make_scheduler(name: str, config: Mapping[str, Any], **overrides: Any) -> SchedulerMixin:
    """A diffusers scheduler by short name (:data:`SCHEDULERS`) or class name, from ``config``.

    ``config`` is an existing scheduler's ``.config`` (its noise schedule is kept);
    ``overrides`` set further options (e.g. ``solver_order=3``). An unknown name is a
    :class:`UserError` listing the choices.
    """
    import diffusers

    class_name, settings = SCHEDULERS.get(name.lower(), (name, {}))
    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise UserError(
            f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)} or a diffusers "
            "scheduler class name such as DDIMScheduler."
        )
    # Keys of another scheduler class are ignored by from_config; keep the logs quiet about them.
    accepted = set(inspect.signature(cls.__init__).parameters)
    base = {k: v for k, v in dict(config).items() if k in accepted}
    if "clip_sample" in accepted and "clip_sample" not in base:
        # Latent diffusion: x0 is a VAE latent, not an image in [-1, 1]. Stable Diffusion's
        # PNDM config does not say so, and DDIM's default would clip the latents.
        base["clip_sample"] = False
    return cls.from_config(base, **{**settings, **overrides})


def sampler_for(saved: SchedulerMixin, name: str | None) -> SchedulerMixin:
    """The sampler a reconstruction uses: the pipeline's ``saved`` scheduler when ``name`` is
    ``None`` (``mindvideo cotrain`` saves DDIM; a converted authors' checkpoint keeps their class
    with ``steps_offset=1``), else :func:`make_scheduler` ``(name, saved.config)``."""
    return saved if name is None else make_scheduler(name, saved.config)


def describe_sampler(scheduler: SchedulerMixin, name: str | None) -> str:
    """One phrase for logs and dry runs: the class, where it came from, its timestep offset."""
    source = "the pipeline's saved scheduler" if name is None else f"scheduler={name}"
    offset = scheduler.config.get("steps_offset")
    extra = "" if offset is None else f", steps_offset={offset}"
    return f"{type(scheduler).__name__} ({source}{extra})"
