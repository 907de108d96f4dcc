"""Reading a config: YAML recipes, dotted overrides, saved model folders (older ones through :mod:`anodiff.formats`).

The loader uses ``yaml.safe_load`` (a config never runs code), rejects unknown
keys naming the file, the dotted key and the nearest valid key (or where a moved
key went), converts YAML lists to tuples and strings to paths, and resolves
relative paths against the YAML file. Overrides (``train.lr=1e-4``) are parsed
as YAML scalars and go through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from anodiff.config.sections import RunConfig
from anodiff.errors import ConfigError
from anodiff.formats import MOVED_KEYS, REMOVED_KEYS


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        source = str(path)
        base_dir = path.parent
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read config as text ({err})") from err
        except yaml.YAMLError as err:  # also a !!python tag: safe_load never constructs objects
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
    for item in overrides:
        _set_dotted(raw, item)
    return build(RunConfig, raw, source=source, base_dir=base_dir)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict (tuples as lists, paths as strings)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def config_to_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def with_overrides(config: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """Apply ``key=value`` overrides to an existing config (checked like a file)."""
    raw = config_to_dict(config)
    for item in overrides:
        _set_dotted(raw, item)
    return build(RunConfig, raw, source="overrides", base_dir=Path.cwd())


def _set_dotted(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}': expected key=value, e.g. train.lr=1e-4")
    node = raw
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    try:
        node[leaf] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{item}': not a valid value ({' '.join(str(err).split())})") from err


def build(cls: type, raw: Any, *, source: str, base_dir: Path, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a raw mapping, checking keys and types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            _raise_if_moved(f"{prefix}{key}", source)
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(hints[key], value, source=source, base_dir=base_dir, key=f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from err


def _raise_if_moved(key: str, source: str) -> None:
    if key in MOVED_KEYS:
        raise ConfigError(f"{source}: '{key}' moved to '{MOVED_KEYS[key]}'")
    if key in REMOVED_KEYS:
        raise ConfigError(f"{source}: '{key}' is no longer a setting ({REMOVED_KEYS[key]}); remove it")


def _coerce(hint: Any, value: Any, *, source: str, base_dir: Path, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, source=source, base_dir=base_dir, key=key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source=source, base_dir=base_dir, prefix=f"{key}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, source=source, base_dir=base_dir, key=key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, source=source, base_dir=base_dir, key=key) for a, v in zip(args, value))
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a path, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint is Any:
        return value
    raise ConfigError(f"{source}: '{key}' must be {getattr(hint, '__name__', hint)}, got {value!r}")
