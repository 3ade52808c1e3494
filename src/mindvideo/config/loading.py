"""Loading, merging and saving configurations: the only module that reads or writes YAML.

A run's configuration is built in three layers, later ones winning: the stage's defaults or
preset, the YAML file given with ``--config``, then ``key=value`` overrides from the command line
(dotted keys reach nested fields). The resolved configuration is saved as ``config.yaml`` beside
the stage's outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mindvideo.utils import UserError, atomic_write_text

T = TypeVar("T")


def _field_paths(cls: type, prefix: str = "") -> list[str]:
    """All dotted field names of a (nested) config dataclass."""
    import typing

    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        names.append(name)
        if dataclasses.is_dataclass(hints.get(f.name)):
            names.extend(_field_paths(hints[f.name], prefix=f"{name}."))
    return names


def _unknown_key_message(key: str, cls: type, source: str) -> str:
    valid = _field_paths(cls)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:  # try the last component alone (e.g. a key put at the wrong nesting level)
        leaf = key.rsplit(".", 1)[-1]
        close = [v for v in valid if v.rsplit(".", 1)[-1] == leaf][:3] or difflib.get_close_matches(
            leaf, valid, n=3, cutoff=0.5
        )
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown config key {key!r} in {source} for {cls.__name__}{hint}"


def _check_keys(
    data: Any, cls: type, source: str, root: type | None = None, prefix: str = ""
) -> None:
    """Raise a UserError for the first key of ``data`` that ``cls`` does not have."""
    import typing

    root = root or cls
    if not isinstance(data, Mapping):
        what = f"key {prefix.rstrip('.')!r}" if prefix else source
        raise UserError(
            f"{what} in {source} must hold a mapping of keys to values, not {type(data).__name__}."
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise UserError(_unknown_key_message(f"{prefix}{key}", root, source))
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub) and value is not None:
            _check_keys(value, sub, source, root=root, prefix=f"{prefix}{key}.")


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1,2]"]`` into a nested dict, values parsed as YAML scalars."""
    from omegaconf import OmegaConf

    overrides = list(overrides)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(
                f"Override {item!r} is not of the form key=value (e.g. seed=1 or rest.volumes=600)."
            )
    return OmegaConf.to_container(OmegaConf.from_dotlist(overrides))  # type: ignore[return-value]


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: T | None = None,
) -> T:
    """Build a ``cls`` instance: ``base`` (or defaults) ← YAML file at ``path`` ← overrides.

    Raises :class:`UserError` naming the file and key for an unknown key (with the closest valid
    names), a value of the wrong type, or a file that cannot be read.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    layers: list[tuple[str, Any]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"Config file {path} does not exist; pass an existing YAML file.")
        try:
            data = OmegaConf.to_container(OmegaConf.load(path))
        except Exception as exc:  # YAML syntax errors come in many types
            detail = " ".join(str(exc).split()).rstrip(".")  # the parser's spans lines
            raise UserError(
                f"Config file {path} is not valid YAML ({detail}); fix its syntax there."
            ) from exc
        layers.append((str(path), data or {}))
    overrides = list(overrides)
    if overrides:
        layers.append(("the command-line overrides", parse_overrides(overrides)))

    merged = OmegaConf.structured(base if base is not None else cls)
    for source, data in layers:
        _check_keys(data, cls, source)
        try:
            merged = OmegaConf.merge(merged, data)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            raise UserError(
                f"Config key {key!r} in {source} has a value of the wrong type "
                f"({_first_line(exc)}); fix the value."
            ) from exc
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0].rstrip(".")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Any) -> str:
    """YAML of a config dataclass (or of a plain mapping of settings)."""
    from omegaconf import OmegaConf

    if isinstance(cfg, Mapping):
        return OmegaConf.to_yaml(OmegaConf.create(dict(cfg)))
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically); returns the path."""
    path = Path(path)
    atomic_write_text(path, config_to_yaml(cfg))
    return path
