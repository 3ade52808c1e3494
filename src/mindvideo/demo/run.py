"""The CPU demo (``mindvideo demo``): the whole pipeline, stages 0 → 8, on the simulated dataset.

simulate → prepare → train the stand-ins for the pretrained models a GPU user loads (CLIP, Stable
Diffusion, evaluation classifiers) → baseline → the low-level decoder → pretrain (MBM) →
contrast → tune-video → cotrain → reconstruct (started from the low-level video) → evaluate →
explain → the generator's ceiling (``RUN/oracle``: reconstruct from the true captions,
evaluate) → the "where the information goes" table (``RUN/information.md``) → report. Every
stage writes into ``RUN/<stage>/`` (the run directory of docs/report.md) with its
``config.yaml``, through the same functions the stage commands call. A stage that finished with
the same configuration is reused on a re-run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mindvideo.utils.errors import UserError

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
    folder: str = ""
    """Where it writes, relative to the run directory (default: ``name``)."""

    def __post_init__(self) -> None:
        self.folder = self.folder or self.name


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
    low = dataclasses.replace(C.lowlevel_preset(preset), data=prepared)
    if low.semantic_channels:  # the semantic map decodes the CLIP stand-in's image embeddings
        low = dataclasses.replace(low, pretrained=C.PretrainedPaths(clip=str(standins / "clip")))
    recon = dataclasses.replace(
        C.reconstruct_preset(preset),
        checkpoint=str(r / "cotrain" / "pipeline"),
        data=prepared,
        lowlevel=str(r / "lowlevel"),
    )
    evaluate = dataclasses.replace(
        C.evaluate_preset(preset),
        reconstructions=str(r / "reconstruct"),
        pretrained=C.PretrainedPaths(
            image_classifier=str(standins / "image_classifier"),
            video_classifier=str(standins / "video_classifier"),
            # CLIP similarity, both CLIP-pcc and the VIFI-CLIP score (a stand-in: temporal
            # pooling of the CLIP stand-in's frame embeddings).
            clip=str(standins / "clip"),
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

    scenes = r / "simulate" / "scenes.json"  # the stand-ins' labels

    def standin_cfg(model: str) -> dict[str, Any]:
        # The stand-ins' sizes and budgets too: changing them trains the stand-ins again.
        cfg = {
            "model": model,
            "preset": preset,
            "seed": seed,
            "prepared": prepared,
            "scenes_json": str(scenes),
            "spec": dataclasses.asdict(standin_preset(preset)),
        }
        if model == "stable_diffusion":  # its text encoder is CLIP's text tower
            cfg["clip"] = str(standins / "clip")
        return cfg

    def _simulate_rest(out: Path) -> None:
        from mindvideo.sim.simulate import simulate_hcp_rest

        simulate_hcp_rest(sim, out)

    def _prepare(cfg: Any) -> Callable[[Path], Any]:
        def go(out: Path) -> None:
            from mindvideo.data.prepare import prepare as prepare_any

            prepare_any(cfg, out)

        return go

    def _standin(model: str) -> Callable[[Path], Any]:
        def go(out: Path) -> None:
            from mindvideo.demo.standins import train_standins

            train_standins(prepared, out.parent, scenes, preset=preset, seed=seed, models=[model])

        return go

    def standin_stage(model: str) -> Stage:
        return Stage(f"standins/{model}", standin_cfg(model), _standin(model))

    def _baseline(out: Path) -> None:
        from mindvideo.evaluation.baseline import baseline as run_baseline

        run_baseline(baseline, out)

    def _explain(out: Path) -> None:
        from mindvideo.interpretation.run import explain as run_explain

        run_explain(explain, out)

    # In an order that runs them one after another; side by side (``jobs`` > 1), a free worker
    # takes the first stage whose inputs are ready, so the longest chain (stand-in Stable
    # Diffusion → tune-video → cotrain) comes first and the classifiers fill the gaps.
    return [
        model_stage("simulate", sim),
        Stage("simulate-rest", sim.rest, _simulate_rest),
        Stage("prepare-hcp", prepare_hcp, _prepare(prepare_hcp)),
        model_stage("prepare", prepare),
        standin_stage("clip"),
        standin_stage("stable_diffusion"),
        model_stage("pretrain", pretrain),
        model_stage("lowlevel", low),
        model_stage("contrast", contrast),
        model_stage("tune-video", tune),
        model_stage("cotrain", cotrain),
        model_stage("reconstruct", recon),
        standin_stage("image_classifier"),
        standin_stage("video_classifier"),
        model_stage("evaluate", evaluate),
        Stage("baseline", baseline, _baseline),
        Stage("explain", explain, _explain),
    ]


#: The function each model stage's command calls: stage name → (module, function), imported
#: only when the stage runs (a worker process imports what its stage needs).
MODEL_STAGES = {
    "simulate": ("mindvideo.sim.simulate", "simulate_wen2018"),
    "prepare": ("mindvideo.data.prepare", "prepare"),
    "pretrain": ("mindvideo.training.pretrain", "pretrain"),
    "lowlevel": ("mindvideo.training.lowlevel", "lowlevel"),
    "contrast": ("mindvideo.training.contrast", "contrast"),
    "tune-video": ("mindvideo.training.tune_video", "tune_video"),
    "cotrain": ("mindvideo.training.cotrain", "cotrain"),
    "reconstruct": ("mindvideo.pipeline.reconstruct", "reconstruct"),
    "evaluate": ("mindvideo.evaluation.runner", "evaluate_reconstructions"),
    "adapt": ("mindvideo.training.adapt", "adapt"),
}


def model_stage(name: str, cfg: Any, folder: str = "") -> Stage:
    """A stage run through the function its command calls (:data:`MODEL_STAGES`)."""
    if name not in MODEL_STAGES:
        raise ValueError(f"no model stage called {name!r}")
    module, function = MODEL_STAGES[name]

    def go(out: Path) -> None:
        import importlib

        getattr(importlib.import_module(module), function)(cfg, out)

    return Stage(name, cfg, go, folder)


# --------------------------------------------------------------------------------------------
# Ablations (paper Table 1): variants of the full run that reuse its upstream stages
# --------------------------------------------------------------------------------------------

ABLATIONS_DIR = "ablations"
LOWLEVEL_STRENGTHS = (0.15, 0.3, 0.5, 0.75, 1.0)
"""The strengths of the low-level path's sweep (the run's own strength is the full model)."""


def ablation_plan(stages: list[Stage], run_dir: Path) -> dict[str, list[Stage]]:
    """The paper's ablations on top of a demo run, each a short chain of stages.

    - ``window-1``, ``window-2``: the spatiotemporal encoder sees 1 (2) fMRI frames instead of
      the run's window — contrast, cotrain, reconstruct and evaluate again;
    - ``no-contrast``: co-training starts from the MBM encoder (stage 3 skipped);
    - ``cfg``: plain classifier-free guidance (a null negative) instead of adversarial guidance;
    - ``no-lowlevel``: without the low-level path, sampling as the paper does (from noise, at the
      paper's guidance scale 12.5); and ``strength-S``: the low-level video noised to other
      strengths (:data:`LOWLEVEL_STRENGTHS`, those that run another number of steps);
      ``keyframe`` (``no-keyframe``): the low-level video's first frame kept as a keyframe, when
      the run does not keep it (does).

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
            chain.append(model_stage("cotrain", cotrain_cfg, f"{ABLATIONS_DIR}/{name}/cotrain"))
            recon_cfg = dataclasses.replace(recon_cfg, checkpoint=str(here / "cotrain/pipeline"))
        chain.append(model_stage("reconstruct", recon_cfg, f"{ABLATIONS_DIR}/{name}/reconstruct"))
        chain.append(
            model_stage(
                "evaluate",
                dataclasses.replace(evaluate, reconstructions=str(here / "reconstruct")),
                f"{ABLATIONS_DIR}/{name}/evaluate",
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
            model_stage("contrast", variant_contrast, f"{ABLATIONS_DIR}/{name}/contrast"),
            *tail(name, variant_cotrain, variant_recon),
        ]
    variants["no-contrast"] = tail(
        "no-contrast", dataclasses.replace(cotrain, encoder=str(r / "pretrain")), recon
    )
    variants["cfg"] = tail("cfg", None, dataclasses.replace(recon, negative="null"))
    if recon.lowlevel is not None:
        from mindvideo.config import ReconstructConfig
        from mindvideo.pipeline import steps_from_video

        # The low-level path off: the paper's sampling, from noise at the paper's guidance.
        paper = dataclasses.replace(
            recon, lowlevel=None, guidance_scale=ReconstructConfig().guidance_scale
        )
        variants["no-lowlevel"] = tail("no-lowlevel", None, paper)

        # Other strengths: those that run another number of steps (the same number starts at
        # the same timestep: the same clips), and at least one.
        def steps(strength: float) -> int:
            return steps_from_video(recon.num_inference_steps, strength)

        seen = {steps(recon.strength)}
        for strength in LOWLEVEL_STRENGTHS:
            if steps(strength) >= 1 and steps(strength) not in seen:
                seen.add(steps(strength))
                name = f"strength-{strength:g}"
                variants[name] = tail(name, None, dataclasses.replace(recon, strength=strength))

        # The keyframe condition the other way round: on when the run has it off, and off when on.
        name = "no-keyframe" if recon.keyframe else "keyframe"
        variants[name] = tail(name, None, dataclasses.replace(recon, keyframe=not recon.keyframe))
    return variants


# --------------------------------------------------------------------------------------------
# Several subjects: one shared model against each subject's own
# --------------------------------------------------------------------------------------------

SUBJECTS_DIR = "subjects"
SHARED_DIR = "shared"


def _scored(
    by: dict[str, Any], run_dir: Path, folder: str, recon: Any, scenes: str, name: str = ""
) -> list[Stage]:
    """``reconstruct`` with ``recon`` into ``folder/reconstruct{name}``, then ``evaluate`` of it
    (labelled by the subjects' ``scenes.json``) into ``folder/evaluate{name}``."""
    evaluate = dataclasses.replace(
        by["evaluate"], reconstructions=str(run_dir / folder / f"reconstruct{name}")
    )
    if evaluate.scenes_json is not None:
        evaluate = dataclasses.replace(evaluate, scenes_json=scenes)
    return [
        model_stage("reconstruct", recon, f"{folder}/reconstruct{name}"),
        model_stage("evaluate", evaluate, f"{folder}/evaluate{name}"),
    ]


def _own_chain(
    by: dict[str, Any], run_dir: Path, folder: str, data: str, scenes: str
) -> list[Stage]:
    """The demo's single-subject chain on the prepared ``data``, into ``folder/{pretrain,
    lowlevel, contrast, cotrain, reconstruct, evaluate}`` (the run's stand-ins and generator)."""
    r = run_dir / folder
    recon = dataclasses.replace(
        by["reconstruct"],
        data=data,
        checkpoint=str(r / "cotrain" / "pipeline"),
        lowlevel=None if by["reconstruct"].lowlevel is None else str(r / "lowlevel"),
    )
    return [
        model_stage(
            "pretrain",
            dataclasses.replace(by["pretrain"], finetune_data=data),
            f"{folder}/pretrain",
        ),
        model_stage(
            "lowlevel", dataclasses.replace(by["lowlevel"], data=data), f"{folder}/lowlevel"
        ),
        model_stage(
            "contrast",
            dataclasses.replace(by["contrast"], data=data, encoder=str(r / "pretrain")),
            f"{folder}/contrast",
        ),
        model_stage(
            "cotrain",
            dataclasses.replace(by["cotrain"], data=data, encoder=str(r / "contrast")),
            f"{folder}/cotrain",
        ),
        *_scored(by, run_dir, folder, recon, scenes),
    ]


def _shared_chain(by: dict[str, Any], run_dir: Path, folder: str, others: list[str]) -> list[Stage]:
    """One model shared by the run's subject and ``others`` (prepared folders), from the run's
    MBM: ``folder/{contrast, cotrain}``."""
    contrast = dataclasses.replace(by["contrast"], subjects=others)
    cotrain = dataclasses.replace(
        by["cotrain"], subjects=others, encoder=str(run_dir / folder / "contrast")
    )
    return [
        model_stage("contrast", contrast, f"{folder}/contrast"),
        model_stage("cotrain", cotrain, f"{folder}/cotrain"),
    ]


def subjects_plan(stages: list[Stage], run_dir: Path, subjects: int) -> list[Stage]:
    """``--subjects K``: the run's simulation with K subjects (subject 1 and the clips are the
    run's own), and per subject both decoders, scored alike:

    - each further subject's own single-subject chain, ``RUN/subjects/subjectK/{pretrain,
      lowlevel, contrast, cotrain, reconstruct, evaluate}`` (subject 1's is the run itself), with
      the run's stand-ins and tuned generator (every subject watched the same clips);
    - one shared model (:mod:`mindvideo.training.shared`), ``RUN/subjects/shared/{contrast,
      cotrain}`` on all K subjects from the run's MBM, and each subject reconstructed by it and
      evaluated, ``RUN/subjects/shared/{reconstruct,evaluate}-subjectK``; the low-level path is
      per subject, each subject's own decoder reading its own voxels (a shared decoder reading
      the aligned fMRI loses a sixth of the pixel identification on the demo scale).
    """
    by = {s.name: s.config for s in stages}
    r = run_dir.resolve()
    here = r / SUBJECTS_DIR
    sim = dataclasses.replace(by["simulate"], subjects=subjects)
    prepared = {1: str(r / "prepare")}
    chain: list[Stage] = []

    chain.append(model_stage("simulate", sim, f"{SUBJECTS_DIR}/simulate"))
    for k in range(2, subjects + 1):
        cfg = dataclasses.replace(by["prepare"], root=str(here / "simulate"), subject=k)
        prepared[k] = str(here / f"prepare-{k}")
        chain.append(model_stage("prepare", cfg, f"{SUBJECTS_DIR}/prepare-{k}"))
    scenes = str(here / "simulate" / "scenes.json")

    for k in range(2, subjects + 1):
        chain += _own_chain(by, r, f"{SUBJECTS_DIR}/subject{k}", prepared[k], scenes)

    shared = f"{SUBJECTS_DIR}/{SHARED_DIR}"
    chain += _shared_chain(by, r, shared, [prepared[k] for k in range(2, subjects + 1)])
    for k in range(1, subjects + 1):
        recon = dataclasses.replace(
            by["reconstruct"], data=prepared[k], checkpoint=str(r / shared / "cotrain" / "pipeline")
        )
        if recon.lowlevel is not None and k > 1:  # each subject's own low-level decoder
            recon = dataclasses.replace(
                recon, lowlevel=str(r / SUBJECTS_DIR / f"subject{k}" / "lowlevel")
            )
        chain += _scored(by, r, shared, recon, scenes, f"-subject{k}")
    return chain


HELD_OUT_DIR = "held-out"
"""``RUN/subjects/held-out``: the last subject as a new one, from a few training segments."""


def held_out_plan(stages: list[Stage], run_dir: Path, subjects: int, preset: str) -> list[Stage]:
    """``--subjects K``: subject K as a new subject with only its first ``n`` training segments
    (``n``: the ``adapt`` preset's ``segments``; 3 for ``demo``), in
    ``RUN/subjects/held-out/``:

    - ``prepare``: subject K prepared from those segments alone (``train_segments``), its ROI
      the voxels subjects 1 … K−1's ROIs kept (``roi.reference``: a t-test over so few
      segments keeps almost nothing); the same test split;
    - ``alone/{pretrain, lowlevel, contrast, cotrain, reconstruct, evaluate}``: the demo's chain
      trained on those segments alone;
    - the host: with K ≥ 3 a shared model of subjects 1 … K−1 (``host/{contrast, cotrain}``,
      from the run's MBM), with K = 2 the run's own pipeline (subject 1's);
    - ``adapt``: subject K's adapter onto the host from those segments (the ``adapt`` preset,
      fine-tuned through the host's encoder and subject 1's low-level decoder), then
      ``reconstruct`` through it and ``evaluate``.

    Scored against subject K's own full-data model (``RUN/subjects/subjectK``) by
    :func:`write_held_out_comparison`.
    """
    from mindvideo.config import adapt_preset

    by = {s.name: s.config for s in stages}
    r = run_dir.resolve()
    here = r / SUBJECTS_DIR
    base = f"{SUBJECTS_DIR}/{HELD_OUT_DIR}"
    segments = adapt_preset(preset).segments
    cut = str(r / base / "prepare")
    scenes = str(here / "simulate" / "scenes.json")
    others = [str(r / "prepare"), *(str(here / f"prepare-{k}") for k in range(2, subjects))]
    prepare = dataclasses.replace(
        by["prepare"],
        root=str(here / "simulate"),
        subject=subjects,
        train_segments=segments,
        roi=dataclasses.replace(by["prepare"].roi, reference=others),
    )
    chain = [
        model_stage("prepare", prepare, f"{base}/prepare"),
        *_own_chain(by, r, f"{base}/alone", cut, scenes),
    ]
    if subjects >= 3:  # a shared model of the others
        host = f"{base}/host"
        chain += _shared_chain(
            by, r, host, [str(here / f"prepare-{k}") for k in range(2, subjects)]
        )
        pipeline = str(r / host / "cotrain" / "pipeline")
    else:
        pipeline = by["reconstruct"].checkpoint
    adapt = dataclasses.replace(
        adapt_preset(preset),
        data=cut,
        reference=by["reconstruct"].data,
        pipeline=pipeline,
        lowlevel=by["reconstruct"].lowlevel,
    )
    chain.append(model_stage("adapt", adapt, f"{base}/adapt"))
    recon = dataclasses.replace(
        by["reconstruct"], data=cut, checkpoint=pipeline, adapter=str(r / base / "adapt")
    )
    return chain + _scored(by, r, base, recon, scenes)


def subject_runs(run_dir: Path, subjects: int) -> dict[int, tuple[Path, Path]]:
    """``{subject: (its own model's evaluation, the shared model's evaluation)}``."""
    here = run_dir / SUBJECTS_DIR
    return {
        k: (
            run_dir / "evaluate" if k == 1 else here / f"subject{k}" / "evaluate",
            here / SHARED_DIR / f"evaluate-subject{k}",
        )
        for k in range(1, subjects + 1)
    }


def write_subjects_comparison(run_dir: Path, subjects: int) -> Path:
    """``RUN/subjects/compare-subjectK/`` (each subject's own model against the shared one,
    paired over its test windows) and ``RUN/subjects/subjects.md``: one row per subject."""
    from mindvideo.evaluation.compare import compare_runs, write_comparison

    rows = []
    for k, (own, shared) in subject_runs(run_dir, subjects).items():
        comparison = compare_runs([own, shared], names=[f"subject{k} own", "shared"])
        write_comparison(comparison, run_dir / SUBJECTS_DIR / f"compare-subject{k}")
        rows.append((k, comparison))
    lines = [
        "## One shared model against each subject's own",
        "",
        "Paired over each subject's test windows (t-test); strict 50-way against the true class "
        "where the data have labels.",
        "",
        "| subject | metric | own model | shared model | difference | p |",
        "|---|---|---|---|---|---|",
    ]
    for k, comparison in rows:
        for metric in SUBJECT_METRICS:
            entry = comparison.metrics.get(metric)
            if entry is None:
                continue
            own, shared = (entry["scores"][name]["mean"] for name in (f"subject{k} own", "shared"))
            p = (entry["tests"].get("shared") or {}).get("pvalue")
            lines.append(
                f"| subject{k} | {metric} | {own:.3f} | {shared:.3f} | {shared - own:+.3f} | "
                + ("–" if p is None else f"{p:.3g}")
                + " |"
            )
    path = run_dir / SUBJECTS_DIR / "subjects.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


HELD_OUT_TARGETS = (0.9, 1.5)
"""The held-out subject's targets on frame 50-way against the true class: the adapted model's
score as a fraction of its own full-data model's, and as a multiple of the model trained on the
same few segments alone."""


def held_out_runs(run_dir: Path, subjects: int) -> dict[str, Path]:
    """The held-out subject's three evaluations: ``adapted`` (its adapter onto the host),
    ``full data`` (its own model of every training segment) and ``alone`` (the demo's chain on
    the few segments alone)."""
    base = run_dir / SUBJECTS_DIR / HELD_OUT_DIR
    return {
        "adapted": base / "evaluate",
        "full data": run_dir / SUBJECTS_DIR / f"subject{subjects}" / "evaluate",
        "alone": base / "alone" / "evaluate",
    }


def write_held_out_comparison(run_dir: Path, subjects: int) -> Path:
    """``RUN/subjects/held-out/compare/`` (the adapted model against the subject's full-data
    model and against the model of its few segments alone, paired over its test windows) and
    ``RUN/subjects/held-out.md``: each score, the two ratios and their targets."""
    from mindvideo.data.prepared import PreparedData
    from mindvideo.evaluation.compare import compare_runs, write_comparison

    runs = held_out_runs(run_dir, subjects)
    base = run_dir / SUBJECTS_DIR / HELD_OUT_DIR
    segments = int(PreparedData.open(base / "prepare").fmri_train.shape[0])
    names = list(runs)
    comparison = compare_runs(list(runs.values()), names=names)
    write_comparison(comparison, base / "compare")
    host = f"subjects 1–{subjects - 1}'s shared model" if subjects >= 3 else "subject 1's model"
    others = f"subjects 1–{subjects - 1}'s ROIs" if subjects >= 3 else "subject 1's ROI"
    lines = [
        f"## Subject {subjects} as a new subject, from {segments} training segments",
        "",
        f"Subject {subjects} prepared from its first {segments} training segments alone, its "
        f"ROI the voxels {others} kept (roi.reference). adapted: its "
        f"adapter onto {host}, fitted on those segments; full data: its own model of every "
        f"training segment (its own ROI); alone: the same chain trained on those {segments} "
        f"segments alone. Paired over its test windows (t-test against the "
        "adapted model); strict 50-way against the true class where the data have labels. "
        f"Targets (frame 50-way): adapted ≥ {HELD_OUT_TARGETS[0]:.2f} × full data and "
        f"≥ {HELD_OUT_TARGETS[1]:.1f} × alone.",
        "",
        "| metric | full data | alone | adapted | adapted / full data | adapted / alone "
        "| p vs full data | p vs alone |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b > 0 else "–"

    def p_of(entry: dict[str, Any], name: str) -> str:
        p = (entry["tests"].get(name) or {}).get("pvalue")
        return "–" if p is None else f"{p:.3g}"

    notes: list[str] = []
    for metric in SUBJECT_METRICS:
        entry = comparison.metrics.get(metric)
        if entry is None:
            continue
        full, alone, adapted = (
            entry["scores"][n]["mean"] for n in ("full data", "alone", "adapted")
        )
        to_full, to_alone = ratio(adapted, full), ratio(adapted, alone)
        if metric == "frame_50way_top1_true":
            targets = HELD_OUT_TARGETS
            met = [
                full > 0 and adapted / full >= targets[0],
                alone > 0 and adapted / alone >= targets[1],
            ]
            to_full += f" (≥ {targets[0]:.2f}: {'met' if met[0] else 'not met'})"
            to_alone += f" (≥ {targets[1]:.1f}: {'met' if met[1] else 'not met'})"
            if full > 0 and targets[1] * alone > full:
                # what the second target asks is more than the subject's own full-data model
                notes.append(
                    f"The model of {segments} segments alone already scores "
                    f"{alone / full:.2f} of the full-data model on frame 50-way, so "
                    f"{targets[1]:.1f} × alone ({targets[1] * alone:.3f}) asks the adapted "
                    f"model for more than the subject's own full-data model scores "
                    f"({full:.3f})."
                )
        lines.append(
            f"| {metric} | {full:.3f} | {alone:.3f} | {adapted:.3f} | {to_full} | {to_alone} "
            f"| {p_of(entry, 'full data')} | {p_of(entry, 'alone')} |"
        )
    for note in notes:
        lines += ["", note]
    path = run_dir / SUBJECTS_DIR / "held-out.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SUBJECT_METRICS = (
    "frame_50way_top1_true",
    "video_50way_top1_true",
    "frame_2way_top1_true",
    "pixel_50way",
    "ssim",
)
"""The scores of :func:`write_subjects_comparison`'s table (those the data have)."""


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


def oracle_plan(stages: list[Stage], run_dir: Path) -> list[Stage]:
    """The generator's ceiling: the run's reconstruction with each window's true caption as the
    condition (``condition=caption``, the stand-in's text encoder) instead of its fMRI — the
    same UNet, sampler, guidance, low-level start and seeds, on every other window (half the
    time; still enough windows for 50-way identification) — then evaluated like the
    reconstructions, into ``RUN/oracle/{reconstruct,evaluate}``."""
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
    return [
        model_stage("reconstruct", recon, f"{ORACLE_DIR}/reconstruct"),
        model_stage("evaluate", evaluate, f"{ORACLE_DIR}/evaluate"),
    ]


def needs(stage: Stage, stages: list[Stage], run_dir: Path) -> list[str]:
    """The stages ``stage`` reads from: those whose folders its configuration names (every
    input of a stage is a path in its configuration, so the graph cannot miss one)."""
    r = run_dir.resolve()
    paths = set(_strings(stage.config))
    found = []
    for other in stages:
        folder = str(r / other.folder)
        if other is not stage and any(p == folder or p.startswith(folder + "/") for p in paths):
            found.append(other.folder)
    return found


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a configuration (dataclasses, mappings, sequences)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _input_stamp(run_dir: Path, folder: str) -> str | None:
    """Which finished run of ``RUN/<folder>`` there is now: the sha256 of its marker (each
    marker holds a run id of its own), ``None`` while it is unfinished."""
    from mindvideo.utils.freshness import sha256_bytes

    try:
        return sha256_bytes((run_dir / folder / DONE).read_bytes())
    except OSError:
        return None


def _marker_key(stage: Stage, run_dir: Path, inputs: Sequence[str] = ()) -> dict[str, Any]:
    """What a finished stage's marker must hold to be reused: its configuration's hash and,
    for a stage that reads others (``inputs``, their folders), which run of each it read. A
    stage whose input ran again since — in this invocation or an earlier one, e.g. the demo
    without ``--subjects`` after a change, then with it — is stale."""
    from mindvideo.utils.freshness import fingerprint

    key: dict[str, Any] = {"config_sha256": fingerprint(stage.config)}
    if inputs:
        key["inputs"] = {need: _input_stamp(run_dir, need) for need in inputs}
    return key


def is_finished(stage: Stage, run_dir: Path, inputs: Sequence[str] = ()) -> bool:
    """Whether ``RUN/<stage folder>`` finished with the same configuration from the runs of
    its ``inputs`` that are there now. A marker of an earlier version (which did not record
    its inputs) is not trusted: the stage runs again."""
    from mindvideo.utils.freshness import read_marker

    key = _marker_key(stage, run_dir, inputs)
    return read_marker(run_dir / stage.folder / DONE, key) is not None


def run_stage(stage: Stage, run_dir: Path, inputs: Sequence[str] = ()) -> float:
    """Run one stage into ``RUN/<stage folder>`` from scratch; returns its seconds. Its marker
    records the runs of ``inputs`` (the folders of the stages it reads) it was made from."""
    from mindvideo.config import save_config
    from mindvideo.utils.freshness import write_marker
    from mindvideo.utils.io import follow_umask

    folder = run_dir / stage.folder
    # A half-finished or outdated stage starts afresh: its checkpoints belong to other settings.
    if folder.exists():
        shutil.rmtree(folder)
    start = time.perf_counter()
    stage.run(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "config.yaml").exists():
        save_config(stage.config, folder / "config.yaml")
    follow_umask(folder)  # weights written by save_pretrained are private (0600) otherwise
    seconds = time.perf_counter() - start
    marker = {**_marker_key(stage, run_dir, inputs), "run": uuid.uuid4().hex, "seconds": seconds}
    write_marker(folder / DONE, marker, indent=None)
    return seconds


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What rebuilds a run's stages in a worker process (stages hold closures, which do not
    travel between processes)."""

    preset: str
    run_dir: str
    seed: int
    ablations: bool
    subjects: int = 1


def stages_of(recipe: Recipe) -> list[Stage]:
    """Every stage of a run, in an order that runs them one after another: the demo's stages,
    the generator's ceiling (``RUN/oracle``), with ``ablations`` the ablations' chains and with
    ``subjects`` > 1 the shared model and each subject's own (:func:`subjects_plan`) and the
    last subject adapted from a few segments (:func:`held_out_plan`)."""
    run_dir = Path(recipe.run_dir)
    stages = plan(recipe.preset, run_dir, recipe.seed)
    everything = [*stages, *oracle_plan(stages, run_dir)]
    if recipe.ablations:
        for chain in ablation_plan(stages, run_dir).values():
            everything += chain
    if recipe.subjects > 1:
        everything += subjects_plan(stages, run_dir, recipe.subjects)
        everything += held_out_plan(stages, run_dir, recipe.subjects, recipe.preset)
    return everything


@functools.lru_cache(maxsize=4)
def _worker_stages(recipe: Recipe) -> dict[str, Stage]:
    return {s.folder: s for s in stages_of(recipe)}


def _worker_init(threads: int | None, level: int) -> None:
    """A worker process: the CLI's logging and thread choice; no progress bars, which would
    interleave with the other workers' (the demo shows what is running)."""
    import tqdm.std

    bar_init = tqdm.std.tqdm.__init__

    def no_bar(self: Any, *args: Any, **kwargs: Any) -> None:
        bar_init(self, *args, **{**kwargs, "disable": True})

    tqdm.std.tqdm.__init__ = no_bar  # this process only: it is a worker, made for this

    from mindvideo.utils.logs import configure_logging
    from mindvideo.utils.threads import configure_threads

    configure_logging(level)
    configure_threads(threads)


def _run_in_worker(recipe: Recipe, folder: str, inputs: Sequence[str]) -> float:
    return run_stage(_worker_stages(recipe)[folder], Path(recipe.run_dir), inputs)


def default_jobs(threads: int | None = None) -> int:
    """Stages side by side: one per usable CPU (each worker chooses its own threads from what
    is free), or as many as fit when every stage uses a fixed ``threads``."""
    from mindvideo.utils.threads import fixed_request, usable_cpus

    fixed = fixed_request(threads)[1]
    return max(1, usable_cpus() // (fixed or 1))


def run_stages(
    recipe: Recipe,
    console: Any,
    jobs: int = 1,
    threads: int | None = None,
    stages: list[Stage] | None = None,
) -> dict[str, bool]:
    """Run the stages of ``recipe`` that are not finished, each once its inputs are, at most
    ``jobs`` at a time (``jobs`` > 1: in worker processes). A stage is reused when it finished
    with the same configuration and none of its inputs ran again. Returns ``{folder: ran}``.

    The first failure stops the run: the stages still running are stopped, their folders left
    unfinished (a re-run starts them afresh), and the error is raised here.

    ``stages`` (one after another only) runs these instead of the recipe's.
    """
    run_dir = Path(recipe.run_dir)
    if stages is None:
        stages = stages_of(recipe)
    elif jobs > 1:
        raise ValueError("worker processes rebuild the stages from the recipe: give jobs=1")
    inputs = {s.folder: needs(s, stages, run_dir) for s in stages}
    ran: dict[str, bool] = {}
    pending = list(stages)
    running: dict[Any, Stage] = {}
    width = max(len(s.folder) for s in stages)
    count = 0
    pool = None

    def finish(stage: Stage, seconds: float | None) -> None:
        nonlocal count
        count += 1
        ran[stage.folder] = seconds is not None
        outcome = "reused" if seconds is None else f"done in {seconds:6.1f} s"
        console.print(f"[{count:>2}/{len(stages)}] {stage.folder:<{width}} {outcome}")

    status = console.status("running…")
    status.start()
    try:
        while pending or running:
            for stage in list(pending):  # reuse what is fresh, start what is ready and fits
                if any(need not in ran for need in inputs[stage.folder]):
                    continue
                reads = inputs[stage.folder]
                upstream = any(ran[need] for need in reads)
                if not upstream and is_finished(stage, run_dir, reads):
                    pending.remove(stage)
                    finish(stage, None)
                elif jobs <= 1:
                    pending.remove(stage)
                    status.update(f"{stage.folder} running…")
                    finish(stage, run_stage(stage, run_dir, reads))
                    break  # look again from the top: later stages may be ready now
                elif len(running) < jobs:
                    if pool is None:
                        pool = _worker_pool(jobs, threads)
                    pending.remove(stage)
                    running[pool.submit(_run_in_worker, recipe, stage.folder, reads)] = stage
            else:
                if not running:
                    if pending:  # cannot happen with a plan in order; say so if it does
                        raise RuntimeError(f"stage {pending[0].folder!r} waits for itself")
                    continue
                status.update(", ".join(s.folder for s in running.values()) + " running…")
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    stage = running.pop(future)
                    finish(stage, future.result())
    except BaseException:
        if pool is not None:
            _stop_workers(pool)
            pool = None
        raise
    finally:
        status.stop()
        if pool is not None:
            pool.shutdown()
    return ran


def _worker_pool(jobs: int, threads: int | None) -> concurrent.futures.ProcessPoolExecutor:
    import multiprocessing

    level = logging.getLogger("mindvideo").getEffectiveLevel()
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        # a fresh interpreter: forking a process that has run OpenMP threads can hang
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(threads, level),
    )


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop the workers now, the stages they run included (a re-run redoes those)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def run_demo(
    preset: str,
    out: Path,
    seed: int = 0,
    argv: list[str] | None = None,
    ablations: bool = False,
    jobs: int | None = None,
    threads: int | None = None,
    subjects: int = 1,
) -> Path:
    """Run every stage into ``out`` (and the ablations with ``ablations=True``, compared with
    the full run in ``out/compare``; with ``subjects`` > 1, a shared model of that many
    simulated subjects against each one's own, in ``out/subjects``), ``jobs`` stages at a time
    (default :func:`default_jobs`); returns the path of the HTML report."""
    from rich.console import Console

    from mindvideo.report import build_report, write_run_info
    from mindvideo.report.information import write_information
    from mindvideo.utils.threads import current_choice

    console = Console(stderr=True)
    jobs = default_jobs(threads) if jobs is None else jobs
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1 (got {jobs}).")
    if subjects < 1:
        raise UserError(f"--subjects must be at least 1 (got {subjects}).")
    choice = current_choice()
    if choice is not None:
        console.print(f"torch threads: {choice.describe()}")
    console.print(f"stages: {jobs} at a time" + (" (each in its own process)" if jobs > 1 else ""))
    out.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(preset, str(out), seed, ablations, subjects)
    total = time.perf_counter()
    run_stages(recipe, console, jobs, threads)
    write_information(out)
    if ablations:
        write_ablation_comparison(out, list(ablation_plan(plan(preset, out, seed), out)))
    if subjects > 1:
        write_subjects_comparison(out, subjects)
        write_held_out_comparison(out, subjects)
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
