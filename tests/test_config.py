"""Configuration: presets ← YAML ← overrides, typed, with clear errors for unknown keys."""

from pathlib import Path

import pytest

from mindvideo.config import (
    DEMO_WINDOW,
    PRESET_DIR,
    PRESETS,
    STAGE_CONFIGS,
    STAGES,
    SimulateConfig,
    load_config,
    save_config,
    simulate_preset,
)
from mindvideo.utils import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_follow_wen2018():
    cfg = SimulateConfig()
    assert (cfg.train_segments, cfg.test_segments) == (18, 5)
    assert (cfg.train_repetitions, cfg.test_repetitions) == (2, 10)
    assert cfg.fps == 30


def test_yaml_then_overrides_win(tmp_path):
    recipe = tmp_path / "sim.yaml"
    recipe.write_text("seed: 3\nsnr: 0.5\nrest:\n  volumes: 400\n")
    cfg = load_config(
        SimulateConfig, recipe, ["seed=7", "rest.subjects=5"], base=simulate_preset("tiny")
    )
    assert cfg.seed == 7  # override beats the file
    assert cfg.snr == 0.5  # the file beats the preset
    assert cfg.rest.volumes == 400 and cfg.rest.subjects == 5
    assert cfg.train_segments == simulate_preset("tiny").train_segments  # preset kept
    assert isinstance(cfg, SimulateConfig)


def test_unknown_key_names_closest(tmp_path):
    recipe = tmp_path / "sim.yaml"
    recipe.write_text("sed: 3\n")
    with pytest.raises(UserError, match=r"Unknown config key 'sed' in .*sim\.yaml.*'seed'"):
        load_config(SimulateConfig, recipe)


def test_unknown_nested_override_names_closest():
    with pytest.raises(UserError, match=r"'rest\.volume'.*did you mean 'rest\.volumes'"):
        load_config(SimulateConfig, None, ["rest.volume=3"])


def test_misplaced_key_suggests_its_nested_home():
    with pytest.raises(UserError, match=r"'volumes'.*'rest\.volumes'"):
        load_config(SimulateConfig, None, ["volumes=3"])


def test_wrong_type_is_a_user_error():
    with pytest.raises(UserError, match=r"'seed'.*wrong type"):
        load_config(SimulateConfig, None, ["seed=abc"])


def test_bad_override_syntax():
    with pytest.raises(UserError, match="key=value"):
        load_config(SimulateConfig, None, ["seed"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(SimulateConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(SimulateConfig, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(SimulateConfig, listy)


def test_save_round_trip(tmp_path):
    cfg = load_config(SimulateConfig, None, ["seed=11", "rest.runs=[REST1_LR]"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(SimulateConfig, path) == cfg
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_unknown_preset():
    with pytest.raises(UserError, match="tiny, demo, full"):
        simulate_preset("huge")


def test_unknown_preset_of_a_cpu_stage_names_the_choices():
    with pytest.raises(UserError, match=r"Unknown tune-video preset 'full'.*tiny, demo\."):
        PRESETS["tune-video"]("full")


@pytest.mark.parametrize(
    "recipe", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_every_recipe_loads(recipe):
    """Every versioned recipe in configs/ is valid for its stage (no drifted keys)."""
    stage = recipe.stem.split("_")[0]  # STAGE.yaml or STAGE_VARIANT.yaml
    assert stage in STAGE_CONFIGS, f"{recipe} names no known stage"
    load_config(STAGE_CONFIGS[stage], recipe)


SHIPPED = sorted(PRESET_DIR.glob("*/*.yaml"))


@pytest.mark.parametrize("preset", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_preset_loads_into_its_stage(preset):
    """A preset shipped in the package is one stage's, listed in the registry, with no unknown
    keys, and its preset function returns exactly what the file says."""
    stage, name = preset.stem, preset.parent.name
    assert stage in STAGES and name in STAGES[stage].presets, f"{preset} is not registered"
    cfg = load_config(STAGES[stage].config, preset)
    assert isinstance(cfg, STAGES[stage].config)
    assert PRESETS[stage](name) == cfg


def test_every_registered_preset_is_shipped():
    for stage in STAGES.values():
        for name in stage.presets:
            assert (PRESET_DIR / name / f"{stage.name}.yaml").is_file(), (stage.name, name)
    assert len(SHIPPED) == sum(len(stage.presets) for stage in STAGES.values())


def test_demo_presets_use_the_demo_window():
    for stage in ("baseline", "lowlevel", "contrast", "cotrain", "reconstruct", "explain"):
        assert PRESETS[stage]("demo").window == DEMO_WINDOW


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_configs_folder_links_to_the_shipped_presets(name):
    """configs/tiny and configs/demo are links to the package's presets: one copy of each."""
    folder = CONFIGS / name
    assert folder.is_symlink() and folder.resolve() == (PRESET_DIR / name).resolve()
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(
        p.name for p in (PRESET_DIR / name).glob("*.yaml")
    )


def test_the_registry_loads_no_heavy_library():
    """The CLI reads the registry for ``mindvideo --help``, which must stay fast."""
    import subprocess
    import sys

    code = (
        "import sys, mindvideo.config.registry; "
        "print(sorted({'torch', 'numpy', 'omegaconf'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
