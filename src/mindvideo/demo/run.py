"""The CPU demo (``mindvideo demo``): the whole pipeline, stages 0 → 8, on the simulated dataset.

simulate → prepare → train the stand-ins for the pretrained models a GPU user loads (CLIP, Stable
Diffusion, evaluation classifiers) → baseline → pretrain (MBM) → contrast → tune-video → cotrain →
reconstruct → evaluate → explain → the generator's ceiling (``RUN/oracle``: reconstruct from the
true captions, evaluate) → the "where the information goes" table (``RUN/information.md``) →
report. Every stage writes into ``RUN/<stage>/`` (the run directory of docs/report.md) with its
``config.yaml``, through the same functions the stage commands call. A stage that finished with
the same configuration is reused on a re-run.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DONE = ".mindvideo-stage.json"
"""Marker written last into a finished stage folder: the hash of the configuration it ran."""


# --------------------------------------------------------------------------------------------
# The plan: one configuration per stage, all from the presets in mindvideo.config
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    name: str
    config: Any
    run: Callable[[Path], Any]
    """Runs the stage into its (fresh) folder."""


def plan(preset: str, run_dir: Path, seed: int = 0) -> list[Stage]:
    """The stages of a demo run, each with its resolved configuration."""
    from mindvideo import config as C

    r = run_dir.resolve()
    sim = dataclasses.replace(C.simulate_preset(preset), seed=seed)
    prepare = dataclasses.replace(C.prepare_preset(preset), root=str(r / "simulate"), subject=1)
    prepare_hcp = C.PrepareConfig(dataset="hcp", root=str(r / "simulate-rest"))
    prepared = str(r / "prepare")
    standins = r / "standins"
    pretrain = dataclasses.replace(
        C.pretrain_preset(preset), data=str(r / "prepare-hcp"), finetune_data=prepared
    )
    contrast = dataclasses.replace(
        C.contrast_preset(preset),
        data=prepared,
        encoder=str(r / "pretrain"),
        pretrained=C.PretrainedPaths(clip=str(standins / "clip")),
    )
    tune = dataclasses.replace(
        C.tune_video_preset(preset),
        data=prepared,
        pretrained=C.PretrainedPaths(stable_diffusion=str(standins / "stable_diffusion")),
    )
    cotrain = dataclasses.replace(
        C.cotrain_preset(preset),
        data=prepared,
        encoder=str(r / "contrast"),
        generator=str(r / "tune-video"),
    )
    recon = dataclasses.replace(
        C.reconstruct_preset(preset), checkpoint=str(r / "cotrain" / "pipeline"), data=prepared
    )
    evaluate = dataclasses.replace(
        C.evaluate_preset(preset),
        reconstructions=str(r / "reconstruct"),
        pretrained=C.PretrainedPaths(
            image_classifier=str(standins / "image_classifier"),
            video_classifier=str(standins / "video_classifier"),
        ),
    )
    explain = dataclasses.replace(
        C.explain_preset(preset),
        data=prepared,
        mbm=str(r / "pretrain"),
        contrast=str(r / "contrast"),
        cotrain=str(r / "cotrain"),
    )
    baseline = dataclasses.replace(
        C.baseline_preset(preset),
        data=prepared,
        scenes_json=str(r / "simulate" / "scenes.json"),
        pretrained=C.PretrainedPaths(clip=str(standins / "clip")),
    )
    from mindvideo.demo.standins.base import standin_preset

    # The stand-ins' sizes and budgets too: changing them trains the stand-ins again.
    standin_cfg = {
        "preset": preset,
        "seed": seed,
        "prepared": prepared,
        "spec": dataclasses.asdict(standin_preset(preset)),
    }

    def _simulate(out: Path) -> None:
        from mindvideo.sim.simulate import simulate_wen2018

        simulate_wen2018(sim, out)

    def _simulate_rest(out: Path) -> None:
        from mindvideo.sim.simulate import simulate_hcp_rest

        simulate_hcp_rest(sim, out)

    def _prepare(cfg: Any) -> Callable[[Path], Any]:
        def go(out: Path) -> None:
            from mindvideo.data.prepare import prepare as prepare_any

            prepare_any(cfg, out)

        return go

    def _standins(out: Path) -> None:
        from mindvideo.demo.standins import train_standins

        train_standins(prepared, out, r / "simulate" / "scenes.json", preset=preset, seed=seed)

    def _baseline(out: Path) -> None:
        from mindvideo.evaluation.baseline import baseline as run_baseline

        run_baseline(baseline, out)

    def _pretrain(out: Path) -> None:
        from mindvideo.training.pretrain import pretrain as run_pretrain

        run_pretrain(pretrain, out)

    def _explain(out: Path) -> None:
        from mindvideo.interpretation.run import explain as run_explain

        run_explain(explain, out)

    return [
        Stage("simulate", sim, _simulate),
        Stage("simulate-rest", sim.rest, _simulate_rest),
        Stage("prepare", prepare, _prepare(prepare)),
        Stage("prepare-hcp", prepare_hcp, _prepare(prepare_hcp)),
        Stage("standins", standin_cfg, _standins),
        Stage("baseline", baseline, _baseline),
        Stage("pretrain", pretrain, _pretrain),
        model_stage("contrast", contrast),
        model_stage("tune-video", tune),
        model_stage("cotrain", cotrain),
        model_stage("reconstruct", recon),
        model_stage("evaluate", evaluate),
        Stage("explain", explain, _explain),
    ]


def model_stage(name: str, cfg: Any) -> Stage:
    """A stage from contrast to evaluate, run through the function its command calls."""

    def go(out: Path) -> None:
        if name == "contrast":
            from mindvideo.training.contrast import contrast

            contrast(cfg, out)
        elif name == "tune-video":
            from mindvideo.training.tune_video import tune_video

            tune_video(cfg, out)
        elif name == "cotrain":
            from mindvideo.training.cotrain import cotrain

            cotrain(cfg, out)
        elif name == "reconstruct":
            from mindvideo.pipeline.reconstruct import reconstruct

            reconstruct(cfg, out)
        elif name == "evaluate":
            from mindvideo.evaluation.runner import evaluate_reconstructions

            evaluate_reconstructions(cfg, out)
        else:
            raise ValueError(f"no model stage called {name!r}")

    return Stage(name, cfg, go)


# --------------------------------------------------------------------------------------------
# Ablations (paper Table 1): variants of the full run that reuse its upstream stages
# --------------------------------------------------------------------------------------------

ABLATIONS_DIR = "ablations"


def ablation_plan(stages: list[Stage], run_dir: Path) -> dict[str, list[Stage]]:
    """The paper's ablations on top of a demo run, each a short chain of stages.

    - ``window-1``, ``window-2``: the spatiotemporal encoder sees 1 (2) fMRI frames instead of
      the run's window — contrast, cotrain, reconstruct and evaluate again;
    - ``no-contrast``: co-training starts from the MBM encoder (stage 3 skipped);
    - ``cfg``: plain classifier-free guidance (a null negative) instead of adversarial guidance.

    Every variant writes into ``RUN/ablations/NAME/STAGE`` and reads everything else from the
    full run (simulated data, stand-ins, pretrain, tune-video).
    """
    by = {s.name: s.config for s in stages}
    r = run_dir.resolve()
    contrast, cotrain, recon, evaluate = (
        by[n] for n in ("contrast", "cotrain", "reconstruct", "evaluate")
    )
    variants: dict[str, list[Stage]] = {}

    def tail(name: str, cotrain_cfg: Any | None, recon_cfg: Any) -> list[Stage]:
        here = r / ABLATIONS_DIR / name
        chain = []
        if cotrain_cfg is not None:
            chain.append(model_stage("cotrain", cotrain_cfg))
            recon_cfg = dataclasses.replace(recon_cfg, checkpoint=str(here / "cotrain/pipeline"))
        chain.append(model_stage("reconstruct", recon_cfg))
        chain.append(
            model_stage(
                "evaluate",
                dataclasses.replace(evaluate, reconstructions=str(here / "reconstruct")),
            )
        )
        return chain

    for window in (1, 2):
        if window == contrast.window:
            continue
        name = f"window-{window}"
        here = r / ABLATIONS_DIR / name
        variant_contrast = dataclasses.replace(contrast, window=window)
        variant_cotrain = dataclasses.replace(
            cotrain, window=window, encoder=str(here / "contrast")
        )
        variant_recon = dataclasses.replace(recon, window=window)
        variants[name] = [
            model_stage("contrast", variant_contrast),
            *tail(name, variant_cotrain, variant_recon),
        ]
    variants["no-contrast"] = tail(
        "no-contrast", dataclasses.replace(cotrain, encoder=str(r / "pretrain")), recon
    )
    variants["cfg"] = tail("cfg", None, dataclasses.replace(recon, negative="null"))
    return variants


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


def oracle_plan(stages: list[Stage], run_dir: Path) -> list[Stage]:
    """The generator's ceiling: the run's reconstruction with each window's true caption as the
    condition (``condition=caption``, the stand-in's text encoder) instead of its fMRI — the
    same UNet, sampler and seeds, on every other window (half the time; still enough windows
    for 50-way identification) — then evaluated like the reconstructions, into
    ``RUN/oracle/{reconstruct,evaluate}``."""
    from mindvideo.report.information import ORACLE_DIR

    by = {s.name: s.config for s in stages}
    r = run_dir.resolve()
    recon = dataclasses.replace(
        by["reconstruct"],
        condition="caption",
        text_encoder=str(r / "standins" / "stable_diffusion"),
        tr_stride=2 * by["reconstruct"].tr_stride,
    )
    evaluate = dataclasses.replace(
        by["evaluate"], reconstructions=str(r / ORACLE_DIR / "reconstruct")
    )
    return [model_stage("reconstruct", recon), model_stage("evaluate", evaluate)]


def run_stage(stage: Stage, run_dir: Path, upstream_changed: bool) -> tuple[bool, float]:
    """Run one stage into ``RUN/<name>`` unless it already finished with the same config and
    nothing upstream ran again. Returns (ran, seconds)."""
    from mindvideo.config import save_config
    from mindvideo.utils.freshness import fingerprint, read_marker, write_marker

    folder = run_dir / stage.name
    key = {"config_sha256": fingerprint(stage.config)}
    if not upstream_changed and read_marker(folder / DONE, key) is not None:
        return False, 0.0
    # A half-finished or outdated stage starts afresh: its checkpoints belong to other settings.
    if folder.exists():
        shutil.rmtree(folder)
    start = time.perf_counter()
    stage.run(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "config.yaml").exists():
        save_config(stage.config, folder / "config.yaml")
    seconds = time.perf_counter() - start
    write_marker(folder / DONE, {**key, "seconds": seconds}, indent=None)
    return True, seconds


def _run_chain(
    stages: list[Stage], run_dir: Path, changed: bool, console: Any, prefix: str = ""
) -> bool:
    """Run ``stages`` in order with one progress line each; returns whether any of them ran."""
    for i, stage in enumerate(stages, 1):
        label = f"[{i:>2}/{len(stages)}] {prefix}{stage.name:<13}"
        with console.status(f"{label} running…"):
            ran, seconds = run_stage(stage, run_dir, upstream_changed=changed)
        changed = changed or ran
        status = f"done in {seconds:6.1f} s" if ran else "reused"
        console.print(f"{label} {status}")
    return changed


def run_demo(
    preset: str,
    out: Path,
    seed: int = 0,
    argv: list[str] | None = None,
    ablations: bool = False,
) -> Path:
    """Run every stage into ``out`` (and the ablations with ``ablations=True``, compared with
    the full run in ``out/compare``); returns the path of the HTML report."""
    from rich.console import Console

    from mindvideo.report import build_report, write_run_info
    from mindvideo.report.information import ORACLE_DIR, write_information
    from mindvideo.utils.threads import current_choice

    console = Console(stderr=True)
    threads = current_choice()
    if threads is not None:
        console.print(f"torch threads: {threads.describe()}")
    out.mkdir(parents=True, exist_ok=True)
    stages = plan(preset, out, seed)
    total = time.perf_counter()
    changed = _run_chain(stages, out, False, console)
    _run_chain(oracle_plan(stages, out), out / ORACLE_DIR, changed, console, prefix="oracle/")
    write_information(out)
    if ablations:
        variants = ablation_plan(stages, out)
        for name, chain in variants.items():
            _run_chain(chain, out / ABLATIONS_DIR / name, changed, console, prefix=f"{name}/")
        write_ablation_comparison(out, list(variants))
    command = ["mindvideo", "demo", *(argv or [])]
    write_run_info(out, command, preset=preset, seed=seed)
    report = build_report(out, out / "report.html", command=" ".join(command))
    console.print("report written")
    console.print(f"total {time.perf_counter() - total:.1f} s")
    return report


def write_ablation_comparison(run_dir: Path, variants: list[str]) -> Path:
    """``RUN/compare``: the full run (the reference) against each ablation's evaluation."""
    from mindvideo.evaluation.compare import compare_runs, write_comparison

    runs = [run_dir / "evaluate", *(run_dir / ABLATIONS_DIR / v / "evaluate" for v in variants)]
    comparison = compare_runs(runs, names=["full", *variants])
    return write_comparison(comparison, run_dir / "compare")["markdown"]
