"""The stage registry: the one list of the pipeline's stages, in pipeline order.

The CLI makes one command of each stage (``mindvideo NAME``), the run directory has one folder
per stage (docs/report.md), and the config modules take each stage's dataclass and presets from
here. Commands that are not stages (``demo``, ``env``, ``compare``, ...) are the CLI's own
business (:mod:`mindvideo.cli.main`). Importing this module loads no heavy library, so
``mindvideo --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from mindvideo.config import stages

__all__ = ["STAGES", "STAGE_CONFIGS", "Stage"]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str
    """The command (``mindvideo NAME``) and the recipe's file name (``NAME.yaml``)."""
    config: type
    """Its configuration dataclass."""
    summary: str
    """One line on what it does (the command's help in ``mindvideo --help``)."""
    presets: tuple[str, ...] = ()
    """Names of its shipped presets (``mindvideo/config/presets/NAME/STAGE.yaml``)."""
    run_dir: str = ""
    """Its folder in a run directory (``RUN/FOLDER``, its ``--out``); unset: its name."""

    @property
    def folder(self) -> str:
        """The folder of this stage in a run directory."""
        return self.run_dir or self.name


_CPU = ("tiny", "demo")

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "simulate",
            stages.SimulateConfig,
            "stage 0: write a simulated fMRI-video dataset in the raw Wen 2018 layout",
            presets=("tiny", "demo", "full"),
        ),
        Stage(
            "prepare",
            stages.PrepareConfig,
            "stage 1: raw Wen 2018 (or the authors' arrays, or HCP) → prepared data",
            presets=_CPU,
        ),
        Stage(
            "baseline",
            stages.BaselineConfig,
            "check: ridge from the fMRI windows to frames and labels, the ceiling with chance",
            presets=_CPU,
        ),
        Stage(
            "lowlevel",
            stages.LowLevelConfig,
            "low-level path: ridge (and a refiner) from the fMRI window to a low-resolution video",
            presets=_CPU,
        ),
        Stage(
            "adapt",
            stages.AdaptConfig,
            "new subject: its adapter into a pipeline subject's voxels, from a few segments",
            presets=_CPU,
        ),
        Stage(
            "pretrain",
            stages.PretrainConfig,
            "stage 2: masked brain modeling (MBM) on HCP, then the subject's training fMRI",
            presets=_CPU,
        ),
        Stage(
            "contrast",
            stages.ContrastConfig,
            "stage 3: train the spatiotemporal fMRI encoder against frozen CLIP (eq. 3)",
            presets=_CPU,
        ),
        Stage(
            "tune-video",
            stages.TuneVideoConfig,
            "stage 4: tune the inflated Stable Diffusion on the training videos and captions",
            presets=_CPU,
        ),
        Stage(
            "cotrain",
            stages.CotrainConfig,
            "stage 5: train the fMRI encoder with the UNet's attention on fMRI-video pairs",
            presets=_CPU,
        ),
        Stage(
            "reconstruct",
            stages.ReconstructConfig,
            "stage 6: reconstruct videos from fMRI with adversarial guidance (resumable)",
            presets=_CPU,
        ),
        Stage(
            "evaluate",
            stages.EvaluateConfig,
            "stage 7: SSIM, PSNR and N-way top-K identification, each with its chance level",
            presets=_CPU,
        ),
        Stage(
            "explain",
            stages.ExplainConfig,
            "stage 8: encoder attention per layer and stage → Yeo-17 sums and flat maps",
            presets=_CPU,
        ),
    )
}
"""Stage name → :class:`Stage`, in pipeline order."""

STAGE_CONFIGS: dict[str, type] = {name: stage.config for name, stage in STAGES.items()}
"""Stage name → config class; the CLI and the recipe tests use this table."""
