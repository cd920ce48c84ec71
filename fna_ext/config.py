"""Configuration as nested dicts: a preset (the paper's settings for a real task, or the
embedded default's), then a YAML file, then ``--set key=value`` overrides with dotted keys.
Every key must already exist in the preset, so a typo is an error that names the key instead of a
silently ignored setting."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml


def merge(base: dict, override: dict, where: str = "") -> dict:
    """A copy of ``base`` with ``override`` applied recursively; unknown keys raise."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in merged:
            raise ValueError(f"unknown config key {path!r}; known keys here: {sorted(merged)}")
        if isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = merge(merged[key], value, path)
        elif isinstance(merged[key], dict):
            raise ValueError(f"config key {path!r} is a section; give it a mapping, not {value!r}")
        else:
            merged[key] = value
    return merged


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the top level must be a mapping of settings")
    return data


def parse_assignment(text: str) -> dict:
    """``"optimizer.lr=0.1"`` -> ``{"optimizer": {"lr": 0.1}}``; the value is read as YAML, so
    numbers, booleans, lists and ``null`` work."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {text!r}: expected key=value, for example optimizer.lr=0.05")
    try:
        parsed: Any = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    for part in reversed(key.strip().split(".")):
        parsed = {part: parsed}
    return parsed


def resolve(preset: dict, config_file: str | Path | None = None,
            assignments: Iterable[str] = ()) -> dict:
    config = preset
    if config_file:
        config = merge(config, load_yaml(config_file))
    for text in assignments:
        config = merge(config, parse_assignment(text))
    return config


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
