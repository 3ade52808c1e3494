"""Interpretation (paper 3.5, 5.1): what the fMRI encoder attends to, on the brain.

1. :func:`record_attention` — average the encoder's spatial attention (attention received per
   patch token) and temporal attention over all test windows, for the first, middle and last
   layers, per learning stage (``"mbm"``, ``"contrast"``, ``"cotrain"``) →
   :class:`AttentionSummary`.
2. :func:`token_to_voxel` → :func:`voxel_to_grayordinates` → :func:`normalise` (maps sum to 1)
   — or all three at once, :func:`attention_maps` — give brain maps on the 91,282 HCP
   grayordinates.
3. :func:`network_sums` (Yeo-17 networks) and :func:`area_sums` (Glasser areas) sum them.
4. :func:`plot_network_bars`, :func:`plot_flat_map`, :func:`plot_stage_grid` draw the paper's
   Fig. 7; :func:`write_explanation` writes all of it for a list of summaries.
"""

from mindvideo.interpretation.attention import (
    LAYER_NAMES,
    STAGES,
    AttentionSummary,
    record_attention,
    resolve_layers,
    token_to_voxel,
)
from mindvideo.interpretation.maps import (
    NO_NETWORK,
    YEO17_NAMES,
    area_sums,
    attention_maps,
    grayordinates_from_mask,
    network_sums,
    normalise,
    voxel_to_grayordinates,
    yeo17_colours,
)
from mindvideo.interpretation.plots import (
    plot_flat_map,
    plot_network_bars,
    plot_stage_grid,
    write_explanation,
)

__all__ = [
    "LAYER_NAMES",
    "NO_NETWORK",
    "STAGES",
    "YEO17_NAMES",
    "AttentionSummary",
    "area_sums",
    "attention_maps",
    "grayordinates_from_mask",
    "network_sums",
    "normalise",
    "plot_flat_map",
    "plot_network_bars",
    "plot_stage_grid",
    "record_attention",
    "resolve_layers",
    "token_to_voxel",
    "voxel_to_grayordinates",
    "write_explanation",
    "yeo17_colours",
]
