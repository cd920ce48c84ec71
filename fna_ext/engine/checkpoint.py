"""One checkpoint format for every run (fine-tuning, pretraining, the search), as torchtitan's
checkpointing keeps it: a dictionary of components, each with ``state_dict``/``load_state_dict``
(the model, its optimisers, the architecture parameters, the loop's position), saved atomically
and read back with ``weights_only=True``.

The file holds ``{"format", "version", "kind", "components": {name: state}, "rng", "config",
"extra"}``. ``kind`` says which loop wrote it (``train`` or ``search``), so a search never resumes
from a fine-tuning checkpoint or the reverse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from ..arch import JSON_FORMAT as ARCH_JSON_FORMAT, Arch
from ..atomic import atomic_torch_save
from ..safe_load import load_plain
from .rng import rng_state, set_rng_state

CHECKPOINT_FORMAT = "fna_ext.checkpoint"
CHECKPOINT_VERSION = 2
# Settings a resumed run may change: how long it runs, how it reports and evaluates, and where its
# files lie, but not what it trains. Anything else that differs from the checkpoint's settings
# stops the resume, since the run would silently continue as a mixture of two configurations. A
# key ending in "." stands for every setting under it.
RESUMABLE_CHANGES = frozenset({
    "train.epochs", "train.eval_every", "train.checkpoint_every", "train.log_every", "train.num_workers",
    "train.channels_last", "eval.", "search.fused", "search.recompute", "search.alpha_log_every",
    "data.root", "data.ann_file", "data.img_dir", "data.val_ann_file", "data.val_img_dir"})
# Settings added after checkpoints (and benchmark runs) were first written, with the default that
# keeps the behaviour those runs had: a run that lacks one ran as if set to this.
ADDED_LATER = {"search.weight_paths": "alpha"}


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict): ...


class Progress:
    """The loop's position as a component: plain integers and lists (the iteration, the steps per
    epoch that :meth:`CheckpointManager.load` checks with ``must_match``, alpha's history)."""

    def __init__(self, **values):
        self.values = dict(values)

    def state_dict(self) -> dict:
        return dict(self.values)

    def load_state_dict(self, state: dict) -> None:
        self.values.update(state)


def load_safely(path: str | Path, what: str = "checkpoint", map_location="cpu"):
    """The contents of a file fna_ext wrote (a checkpoint, a model file), read with
    ``weights_only=True``: a torn, foreign or pickled-code file is one ValueError, never run."""
    return load_plain(path, what, map_location)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint's contents, loaded without unpickling code, format and version checked."""
    path = Path(path)
    payload = load_safely(path, "checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an fna_ext checkpoint (format {CHECKPOINT_FORMAT!r})")
    if payload.get("version") != CHECKPOINT_VERSION or not isinstance(payload.get("components"), dict):
        raise ValueError(f"{path} was written by another version of fna_ext (checkpoint version "
                         f"{payload.get('version', 1)}, this one reads {CHECKPOINT_VERSION}); start without --resume")
    return payload


def _flat(settings, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``, tuples as lists (YAML and torch.save disagree on them)."""
    if isinstance(settings, dict):
        return {k: v for key, value in settings.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: _as_lists(settings)}


def _as_lists(value):
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    return value


def _may_change(key: str, may_change: frozenset[str]) -> bool:
    return key in may_change or any(p.endswith(".") and key.startswith(p) for p in may_change)


def changed_settings(stored: dict | None, current: dict | None,
                     may_change: frozenset[str] = RESUMABLE_CHANGES) -> list[str]:
    """The settings (dotted keys, ``key: then -> now``) that differ between a finished or
    checkpointed run and this one, leaving out ``may_change`` (default :data:`RESUMABLE_CHANGES`).
    A setting the run lacks counts as its :data:`ADDED_LATER` default where it has one. Settings
    without a ``train`` section are one (a bare trainer's), and a section the stored settings
    lack entirely is not compared (a checkpoint written before the whole run's settings were
    kept holds ``train`` alone)."""
    stored, current = ({"train": s} if "train" not in s else s for s in (stored or {}, current or {}))
    current = {name: section for name, section in current.items() if name in stored}
    then, now = _flat(stored), _flat(current)
    unset = object()
    changes = []
    for key in sorted(set(then) | set(now)):
        before, after = then.get(key, ADDED_LATER.get(key, unset)), now.get(key, unset)
        if before != after and not _may_change(key, may_change):
            changes.append(f"{key}: {'unset' if before is unset else repr(before)} -> "
                           f"{'unset' if after is unset else repr(after)}")
    return changes


def _comparable(value):
    """An extra-state value as a resume compares it: an arch's JSON as the Arch (whose equality
    leaves out the search record it may carry), anything else with tuples as lists."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(data, dict) and data.get("format") == ARCH_JSON_FORMAT:
            return Arch.from_dict(data)
    return _as_lists(value)


class CheckpointManager:
    """Saves and restores ``components`` (name -> Stateful) as one file at ``path``."""

    def __init__(self, path: str | Path, kind: str, components: dict[str, Stateful], *, config: dict | None = None,
                 extra: dict | None = None):
        self.path, self.kind, self.components = Path(path), kind, components
        self.config, self.extra = config, extra or {}

    def state_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": self.kind,
                "components": {name: c.state_dict() for name, c in self.components.items()},
                "rng": rng_state(), "config": self.config, "extra": self.extra}

    def save(self) -> Path:
        return atomic_torch_save(self.state_dict(), self.path)

    def load(self, path: str | Path | None = None, *, must_match: dict | None = None) -> dict:
        """Restores every component and the RNG state from ``path`` (default: this manager's)
        and returns the payload. ``must_match`` names progress values the file must have (the
        steps per epoch): a different value means other data or batch size, and the resume stops
        with one line saying so, before anything is restored."""
        path = Path(path) if path else self.path
        payload = load_checkpoint(path)
        if payload["kind"] != self.kind or set(payload["components"]) != set(self.components):
            raise ValueError(f"{path} is a {payload['kind']} checkpoint with the parts {sorted(payload['components'])}, "
                             f"not one of this {self.kind} run; start without --resume or use another --out")
        changed = changed_settings(payload.get("config"), self.config)
        changed += [f"{key}: the checkpoint's differs from this run's" for key in sorted(self.extra)
                    if key in (payload.get("extra") or {})
                    and _comparable(payload["extra"][key]) != _comparable(self.extra[key])]
        if changed:
            raise ValueError(f"--resume: {path} was written with other settings ({'; '.join(changed)}); resume "
                             "with the settings it was started with (only the epochs, the eval settings, the logging "
                             "and checkpoint intervals, the workers, channels_last, the fused and recompute "
                             "switches and the data paths may change), or start without --resume in another --out")
        progress = payload["components"].get("progress", {})
        for key, value in (must_match or {}).items():
            if progress.get(key) != value:
                raise ValueError(f"checkpoint {path} was written with {key} {progress.get(key)}, this run has "
                                 f"{value}: the data or batch_size changed; resume with the same ones")
        for name, component in self.components.items():
            component.load_state_dict(payload["components"][name])
        set_rng_state(payload["rng"])
        return payload
