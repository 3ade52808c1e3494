"""The video generator (paper 3.4, B): Stable Diffusion's UNet inflated for video.

:class:`VideoUNet` (a ``diffusers.UNet2DConditionModel`` with scene-dynamic sparse causal
self-attention and zero-initialised temporal attention), its attention processors, and the
converter for the authors' released UNet weights.
"""

from mindvideo.generator.attention import (
    FrameAttnProcessor,
    SparseCausalAttnProcessor,
    VideoTransformerBlock,
    sparse_causal_frame_indices,
)
from mindvideo.generator.convert import (
    ConversionReport,
    convert_authors_unet_state_dict,
    inflated_unet_from_authors,
    load_state_dict_safely,
    unet2d_config_from_authors,
)
from mindvideo.generator.unet import (
    TEMPORAL_MODULES,
    TRAINABLE_MODULES,
    VideoUNet,
    VideoUNetOutput,
    trainable_parameters,
    trained_keys,
)

__all__ = [
    "TEMPORAL_MODULES",
    "TRAINABLE_MODULES",
    "ConversionReport",
    "FrameAttnProcessor",
    "SparseCausalAttnProcessor",
    "VideoTransformerBlock",
    "VideoUNet",
    "VideoUNetOutput",
    "convert_authors_unet_state_dict",
    "inflated_unet_from_authors",
    "load_state_dict_safely",
    "sparse_causal_frame_indices",
    "trainable_parameters",
    "trained_keys",
    "unet2d_config_from_authors",
]
