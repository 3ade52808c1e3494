"""``mindvideo explain``: the fMRI encoder's attention per layer and stage on the brain (stage 8).

For each encoder given — after MBM pre-training (``--mbm``), after contrastive learning
(``--contrast``), after co-training (``--cotrain``) — the attention of its first, middle and last
layers is averaged over the prepared subject's test windows (paper 3.5, 5.1), mapped to voxels
and to the 91,282 HCP grayordinates, summed within the Yeo-17 networks and drawn as bar charts and
flat maps (:func:`mindvideo.interpretation.write_explanation`). Without a voxel → grayordinate
map in the prepared data (the authors' arrays carry none) only the attention summaries are saved.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "explain",
        run,
        "Record the fMRI encoder's attention (first, middle and last layer) over the test "
        "windows of a prepared subject after each learning stage given (--mbm, --contrast, "
        "--cotrain), map it to voxels and the cortical surface, sum it within the Yeo-17 "
        "networks and draw bar charts and flat maps (paper 3.5, Fig. 7). Writes "
        "OUT/attention_{stage}.npz, OUT/networks.json, OUT/networks_*.png, "
        "OUT/flat_maps.png, OUT/explain.json and OUT/config.yaml.",
    )
    parser.add_key_option("--data", "prepared subject; sets config key data", type=Path)
    parser.add_key_option(
        "--mbm", "MBM folder or pretrain output (mbm/); sets config key mbm", type=Path
    )
    parser.add_key_option(
        "--contrast",
        "contrast output (fmri_encoder/) or the encoder folder; sets config key contrast",
        type=Path,
    )
    parser.add_key_option(
        "--cotrain",
        "cotrain output, pipeline folder or its fmri_encoder/; sets config key cotrain",
        type=Path,
    )
    parser.add_stage_arguments()


def run(args: argparse.Namespace) -> int:
    from mindvideo.interpretation.run import explain

    return run_stage(
        args,
        explain,
        report=lambda written: f"Wrote {len(written)} files to {args.out}",
        staged=True,
    )
