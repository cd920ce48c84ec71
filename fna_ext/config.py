"""Configuration as nested dicts: a preset (the paper's settings for a real task, or the
embedded default's), then a YAML file, then ``--set key=value`` overrides with dotted keys.

Every key must already exist in the preset, so a typo is an error that names the key instead of a
silently ignored setting. The merged config is then validated once, before any work starts:
each value against its :class:`Rule` (a type, a range, a set of choices), or against the type of
the preset's value where no rule is given, so ``--set search.lambda=abc`` is refused at once and
not at epoch 15. A refused value gives one line naming where it came from, the key, the value and
what is allowed."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml


# --------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Rule:
    """What one setting accepts. ``kind`` is ``int``, ``number``, ``bool``, ``str``, ``list`` or
    ``any``; ``low``/``high`` bound numbers (``open_low``/``open_high``: exclusive); ``choices``
    lists the allowed values; a ``list`` has ``item`` rules and optionally ``length`` items;
    ``nullable`` admits null."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    item: "Rule | None" = None
    length: int | None = None
    nullable: bool = False

    def describe(self) -> str:
        text = self._describe_value()
        return f"null or {text}" if self.nullable else text

    def _describe_value(self) -> str:
        if self.choices:
            return f"one of {', '.join(_yaml_text(c) for c in self.choices)}"
        if self.kind == "list":
            count = f"{self.length} " if self.length is not None else ""
            items = self.item.describe() if self.item else "values"
            return f"a list of {count}{_plural(items)}"
        noun = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
                "any": "any value"}[self.kind]
        return noun + self._describe_range()

    def _describe_range(self) -> str:
        if self.low is not None and self.high is not None:
            return (f" in {'(' if self.open_low else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.open_high else ']'}")
        if self.low is not None:
            return f" {'>' if self.open_low else '>='} {_num(self.low)}"
        if self.high is not None:
            return f" {'<' if self.open_high else '<='} {_num(self.high)}"
        return ""

    def check(self, value: Any) -> Any:
        """``value`` as the setting stores it (``"1e-3"`` -> 0.001); raises :class:`InvalidValue`."""
        if value is None:
            if self.nullable or self.kind == "any":
                return None
            raise InvalidValue
        value = self._check_kind(value)
        if self.choices and value not in self.choices:
            raise InvalidValue
        if self.kind in ("int", "number"):
            self._check_range(value)
        return value

    def _check_kind(self, value: Any) -> Any:
        if self.kind == "any":
            return value
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise InvalidValue
        if self.kind == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise InvalidValue
        if self.kind == "number":
            return _as_number(value)
        if self.kind == "str":
            if isinstance(value, str) and value.strip():
                return value
            raise InvalidValue
        if not isinstance(value, (list, tuple)) or (self.length is not None and len(value) != self.length):
            raise InvalidValue
        return [self.item.check(v) for v in value] if self.item else list(value)

    def _check_range(self, value: float) -> None:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            raise InvalidValue
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            raise InvalidValue


class InvalidValue(Exception):
    """A value its rule refuses (turned into a ValueError naming the key by :func:`validate`)."""


def Int(low: int | None = None, high: int | None = None, *, nullable: bool = False) -> Rule:
    return Rule("int", low=low, high=high, nullable=nullable)


def Number(low: float | None = None, high: float | None = None, *, open_low: bool = False,
           open_high: bool = False, nullable: bool = False) -> Rule:
    return Rule("number", low=low, high=high, open_low=open_low, open_high=open_high, nullable=nullable)


def Bool(*, nullable: bool = False) -> Rule:
    return Rule("bool", nullable=nullable)


def Str(*, nullable: bool = False) -> Rule:
    return Rule("str", nullable=nullable)


def Choice(*choices) -> Rule:
    return Rule("any", choices=tuple(choices))


def List(item: Rule | None = None, length: int | None = None, *, nullable: bool = False) -> Rule:
    return Rule("list", item=item, length=length, nullable=nullable)


def _yaml_text(value: Any) -> str:
    """A choice as a user writes it in YAML or --set: true and false in lower case."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _as_number(value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidValue
    if isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string; it is a number to every user
        try:
            value = float(value)
        except ValueError:
            raise InvalidValue from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidValue
    return value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _plural(description: str) -> str:
    for singular, plural in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
        if description.startswith(singular):
            return plural + description[len(singular):]
    return description


def inferred_rule(preset_value: Any) -> Rule:
    """The rule of a setting without an explicit one: the type of its preset value."""
    if isinstance(preset_value, bool):
        return Bool()
    if isinstance(preset_value, int):
        return Int()
    if isinstance(preset_value, float):
        return Number()
    if isinstance(preset_value, str):
        return Str()
    if isinstance(preset_value, (list, tuple)):
        kinds = {type(v) for v in preset_value}
        return List(inferred_rule(preset_value[0]) if len(kinds) == 1 and float not in kinds else
                    (Number() if kinds <= {int, float} and kinds else None))
    return Rule("any")


Check = Callable[[dict], None]  # a check across settings; raises ValueError naming the keys


def validate(config: dict, preset: dict, rules: Mapping[str, Rule] = {}, checks: Iterable[Check] = (),
             sources: Mapping[str, str] = {}) -> dict:
    """``config`` with every value checked and normalised: by ``rules[dotted key]``, else by the
    type of the preset's value. ``sources`` maps a key to where its value came from (``--set
    ...``, ``--config FILE``), for the message. Then each of ``checks``."""
    checked = _validate_section(config, preset, rules, sources, "")
    for check in checks:
        check(checked)
    return checked


def _validate_section(section: dict, preset: dict, rules, sources, where: str) -> dict:
    out = {}
    for key, value in section.items():
        path = f"{where}.{key}" if where else str(key)
        if isinstance(value, dict):
            out[key] = _validate_section(value, preset.get(key, {}), rules, sources, path)
            continue
        rule = rules.get(path) or inferred_rule(preset.get(key))
        try:
            out[key] = rule.check(value)
        except InvalidValue:
            source = sources.get(path)
            prefix = f"{source}: " if source else ""
            raise ValueError(f"{prefix}{path} must be {rule.describe()}, got {value!r}") from None
    return out


# --------------------------------------------------------------------------- merging

def merge(base: dict, override: dict, where: str = "", sources: dict | None = None,
          source: str | None = None) -> dict:
    """A copy of ``base`` with ``override`` applied recursively; unknown keys raise. Each key
    set is recorded in ``sources`` as coming from ``source``."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else str(key)
        prefix = f"{source}: " if source else ""
        if key not in merged:
            raise ValueError(f"{prefix}unknown config key {path!r}; known keys here: "
                             f"{', '.join(map(str, sorted(merged)))}")
        if isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = merge(merged[key], value, path, sources, source)
        elif isinstance(merged[key], dict):
            raise ValueError(f"{prefix}config key {path!r} is a section; give it a mapping, not {value!r}")
        elif isinstance(value, dict):
            raise ValueError(f"{prefix}config key {path!r} is a setting; give it a value, not a mapping")
        else:
            merged[key] = value
            if sources is not None and source:
                sources[path] = source
    return merged


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--config {path} is a folder; give a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"--config {path} is not a text file; give a YAML file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not valid YAML ({_one_line(err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the top level must be a mapping of settings")
    return data


def _one_line(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as 'problem at line L, column C'."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def parse_assignment(text: str) -> dict:
    """``"optimizer.lr=0.1"`` -> ``{"optimizer": {"lr": 0.1}}``; the value is read as YAML, so
    numbers, booleans, lists and ``null`` work."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ValueError(f"--set {text!r}: expected key=value, for example train.optimizer.lr=0.05")
    try:
        parsed: Any = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    for part in reversed(key.strip().split(".")):
        parsed = {part: parsed}
    return parsed


def resolve(preset: dict, config_file: str | Path | None = None, assignments: Iterable[str] = (),
            rules: Mapping[str, Rule] = {}, checks: Iterable[Check] = ()) -> dict:
    """``preset``, then ``config_file``, then each ``key=value`` of ``assignments``; validated
    (:func:`validate`) before it is returned."""
    config, sources = preset, {}
    if config_file:
        shown = str(config_file) if str(config_file).isprintable() else repr(str(config_file))
        config = merge(config, load_yaml(config_file), sources=sources, source=f"--config {shown}")
    for text in assignments:
        # quoted when it holds a newline or another unprintable character: the error stays one line
        shown = text if text.isprintable() else repr(text)
        config = merge(config, parse_assignment(text), sources=sources, source=f"--set {shown}")
    return validate(config, preset, rules, checks, sources)


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
