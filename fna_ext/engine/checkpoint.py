"""One checkpoint format for every run (fine-tuning, pretraining, the search), as torchtitan's
checkpointing keeps it: a dictionary of components, each with ``state_dict``/``load_state_dict``
(the model, its optimisers, the architecture parameters, the loop's position), saved atomically
and read back with ``weights_only=True``.

The file holds ``{"format", "version", "kind", "components": {name: state}, "rng", "config",
"extra"}``. ``kind`` says which loop wrote it (``train`` or ``search``), so a search never resumes
from a fine-tuning checkpoint or the reverse."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


from ..atomic import atomic_torch_save
from ..safe_load import load_plain
from .rng import rng_state, set_rng_state

CHECKPOINT_FORMAT = "fna_ext.checkpoint"
CHECKPOINT_VERSION = 2
# Settings a resumed run may change: how long it runs, how it reports, and where its files lie,
# but not what it computes. Anything else that differs from the checkpoint's settings stops the
# resume, since the run would silently continue as a mixture of two configurations.
RESUMABLE_CHANGES = frozenset({
    "train.epochs", "train.eval_every", "train.checkpoint_every", "train.log_every", "train.num_workers",
    "train.channels_last", "eval.batch_size", "search.fused", "search.recompute", "search.alpha_log_every",
    "data.root", "data.ann_file", "data.img_dir", "data.val_ann_file", "data.val_img_dir"})


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


def changed_settings(stored: dict | None, current: dict | None,
                     may_change: frozenset[str] = RESUMABLE_CHANGES) -> list[str]:
    """The settings (dotted keys, ``key: then -> now``) that differ between the checkpoint's
    run and this one, leaving out ``may_change`` (default :data:`RESUMABLE_CHANGES`), and settings the checkpoint does not
    have: a later version's new setting, whose default keeps the old behaviour. Settings without a
    ``train`` section are one (a bare trainer's, or a checkpoint written before the whole run's
    settings were kept)."""
    stored, current = ({"train": s} if "train" not in s else s for s in (stored or {}, current or {}))
    then, now = _flat(stored), _flat(current)
    return [f"{key}: {then[key]!r} -> {now[key]!r}" if key in now else f"{key}: {then[key]!r} -> unset"
            for key in sorted(then) if key not in may_change and (key not in now or then[key] != now[key])]


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
                    and _as_lists(payload["extra"][key]) != _as_lists(self.extra[key])]
        if changed:
            raise ValueError(f"--resume: {path} was written with other settings ({'; '.join(changed)}); resume "
                             "with the settings it was started with (only the epochs, the logging, evaluation and "
                             "checkpoint intervals, the workers, the fused and recompute switches and the data "
                             "paths may change), or start without --resume in another --out")
        progress = payload["components"].get("progress", {})
        for key, value in (must_match or {}).items():
            if progress.get(key) != value:
                raise ValueError(f"checkpoint {path} was written with {key} {progress.get(key)}, this run has "
                                 f"{value}: the data or batch_size changed; resume with the same ones")
        for name, component in self.components.items():
            component.load_state_dict(payload["components"][name])
        set_rng_state(payload["rng"])
        return payload
