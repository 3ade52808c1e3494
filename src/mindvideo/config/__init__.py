"""Typed configuration for every stage — the only package that reads, merges or saves YAML.

Each stage has a dataclass (:mod:`~mindvideo.config.stages`), listed once in the stage registry
(:mod:`~mindvideo.config.registry`). A run's configuration is built in three layers, later ones
winning: the stage's defaults or one of its presets (YAML files shipped in
``mindvideo/config/presets/``, :mod:`~mindvideo.config.presets`), the YAML file given with
``--config``, then ``key=value`` overrides from the command line (dotted keys reach nested
fields; :mod:`~mindvideo.config.loading`). The resolved configuration is saved as
``config.yaml`` beside the stage's outputs.
"""

from mindvideo.config.loading import (
    config_to_dict,
    config_to_yaml,
    load_config,
    parse_overrides,
    save_config,
)
from mindvideo.config.presets import (
    DEMO_WINDOW,
    PRESET_DIR,
    PRESETS,
    adapt_preset,
    baseline_preset,
    contrast_preset,
    cotrain_preset,
    evaluate_preset,
    explain_preset,
    load_preset,
    lowlevel_preset,
    prepare_preset,
    preset_path,
    pretrain_preset,
    reconstruct_preset,
    simulate_preset,
    tune_video_preset,
)
from mindvideo.config.registry import STAGE_CONFIGS, STAGES, Stage
from mindvideo.config.stages import (
    AdaptConfig,
    BaselineConfig,
    CaptionAugConfig,
    CaptionConfig,
    ContrastConfig,
    CotrainConfig,
    EncoderSizeConfig,
    EvaluateConfig,
    ExplainConfig,
    HcpConfig,
    LowLevelConfig,
    PrepareConfig,
    PretrainConfig,
    PretrainedPaths,
    ReconstructConfig,
    RestConfig,
    RoiConfig,
    SimulateConfig,
    TrainConfig,
    TuneVideoConfig,
)

__all__ = [
    "DEMO_WINDOW",
    "PRESETS",
    "PRESET_DIR",
    "STAGES",
    "STAGE_CONFIGS",
    "AdaptConfig",
    "BaselineConfig",
    "CaptionAugConfig",
    "CaptionConfig",
    "ContrastConfig",
    "CotrainConfig",
    "EncoderSizeConfig",
    "EvaluateConfig",
    "ExplainConfig",
    "HcpConfig",
    "LowLevelConfig",
    "PrepareConfig",
    "PretrainConfig",
    "PretrainedPaths",
    "ReconstructConfig",
    "RestConfig",
    "RoiConfig",
    "SimulateConfig",
    "Stage",
    "TrainConfig",
    "TuneVideoConfig",
    "adapt_preset",
    "baseline_preset",
    "config_to_dict",
    "config_to_yaml",
    "contrast_preset",
    "cotrain_preset",
    "evaluate_preset",
    "explain_preset",
    "load_config",
    "load_preset",
    "lowlevel_preset",
    "parse_overrides",
    "prepare_preset",
    "preset_path",
    "pretrain_preset",
    "reconstruct_preset",
    "save_config",
    "simulate_preset",
    "tune_video_preset",
]
