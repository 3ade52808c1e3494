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
import dataclasses
import logging
from pathlib import Path

from mindvideo.cli._stage import add_stage_arguments, resolve_config
from mindvideo.interpretation.run import explain

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "explain",
        help="stage 8: encoder attention per layer and stage → Yeo-17 sums and flat maps",
        description=(
            "Record the fMRI encoder's attention (first, middle and last layer) over the test "
            "windows of a prepared subject after each learning stage given (--mbm, --contrast, "
            "--cotrain), map it to voxels and the cortical surface, sum it within the Yeo-17 "
            "networks and draw bar charts and flat maps (paper 3.5, Fig. 7). Writes "
            "OUT/attention_{stage}.npz, OUT/networks.json, OUT/networks_*.png, "
            "OUT/flat_maps.png, OUT/explain.json and OUT/config.yaml."
        ),
    )
    parser.add_argument("--data", type=Path, help="prepared subject; sets config key data")
    parser.add_argument(
        "--mbm", type=Path, help="MBM folder or pretrain output (mbm/); sets config key mbm"
    )
    parser.add_argument(
        "--contrast",
        type=Path,
        help="contrast output (fmri_encoder/) or the encoder folder; sets config key contrast",
    )
    parser.add_argument(
        "--cotrain",
        type=Path,
        help="cotrain output, pipeline folder or its fmri_encoder/; sets config key cotrain",
    )
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import ExplainConfig

    cfg = resolve_config(ExplainConfig, args)
    flags = {"data": args.data, "mbm": args.mbm, "contrast": args.contrast, "cotrain": args.cotrain}
    cfg = dataclasses.replace(cfg, **{k: str(v) for k, v in flags.items() if v is not None})
    written = explain(cfg, args.out)
    log.info("Wrote %d files to %s", len(written), args.out)
    return 0
