"""Runs an fna_ext command line in this process with one fault injected, for test_faults.py.

    python fault_injection.py FAULT_JSON MODULE [ARGS...]

installs the fault that FAULT_JSON describes, then runs ``python -m MODULE ARGS...`` through
runpy. The faults:

- ``{"kill_at_step": K}``: SIGKILL in the middle of training step K (0-based: K steps have
  completed), after its forward and backward (and, in the search, its alpha step), in place of the
  optimizer step;
- ``{"torn_checkpoint": N}``: the N-th checkpoint save (1-based) writes half of its bytes into the
  temporary file that :func:`fna_ext.atomic.atomic_write` made, then SIGKILLs, before the rename;
- ``{"kill_at_evaluation": true}``: SIGKILL as the first evaluation starts (after the checkpoint
  written at the end of that epoch);
- ``{"default_seed": {...}}``: MODULE is ignored; waits until ``processes`` processes reached the
  same point (files in ``barrier``), then calls :func:`fna_ext.pretrain.default_seed_weights`
  with ``build_default_seed`` replaced by a tiny pretraining on ``data`` that appends a line to
  ``marker``; prints the path it returned as one JSON line.

SIGKILL cannot be caught or cleaned up after: the process ends as on a power cut or the OOM
killer, with whatever was on disk at that moment.
"""

from __future__ import annotations

import io
import json
import os
import runpy
import signal
import sys
import time
from pathlib import Path


def kill_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_step(step: int) -> None:
    from fna_ext.engine.trainer import Trainer

    original = Trainer.train_step

    def train_step(self, batch):
        if self.iteration == step:
            # an instance attribute shadows the hooks' method: the step dies where it would update
            self.hooks.optimizer_step = lambda optimizer: kill_now()
        return original(self, batch)

    Trainer.train_step = train_step


def torn_checkpoint(save_number: int) -> None:
    import torch

    from fna_ext import atomic
    from fna_ext.engine.checkpoint import CheckpointManager

    original = CheckpointManager.save
    saves = [0]

    def save(self):
        saves[0] += 1
        if saves[0] < save_number:
            return original(self)
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        data = buffer.getvalue()

        def write_half(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            kill_now()

        return atomic.atomic_write(self.path, write_half)  # the real temporary file and rename

    CheckpointManager.save = save


def kill_at_evaluation() -> None:
    from fna_ext.engine.trainer import Trainer

    original = Trainer._should_evaluate

    def should_evaluate(self, epoch):
        if original(self, epoch):
            kill_now()
        return False

    Trainer._should_evaluate = should_evaluate


def default_seed(data: str, marker: str, barrier: str, processes: int, width_mult: float = 0.35,
                 image_size: int = 32) -> None:
    from fna_ext.pretrain import core

    def tiny_build(path, name="mobilenet_v2"):
        with open(marker, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        core.pretrain_seed(path, data_root=data, epochs=1, batch_size=10, width_mult=width_mult,
                           image_size=image_size)

    core.build_default_seed = tiny_build
    # both processes call default_seed_weights() at the same moment, after their imports
    folder = Path(barrier)
    (folder / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while len(list(folder.glob("ready-*"))) < processes:
        if time.monotonic() > deadline:
            sys.exit("fault_injection: the other process never reached the barrier")
        time.sleep(0.01)
    path = core.default_seed_weights()
    print(json.dumps({"path": str(path)}))


def main() -> None:
    fault, module, args = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if "default_seed" in fault:
        default_seed(**fault["default_seed"])
        return
    if "kill_at_step" in fault:
        kill_at_step(int(fault["kill_at_step"]))
    if "torn_checkpoint" in fault:
        torn_checkpoint(int(fault["torn_checkpoint"]))
    if fault.get("kill_at_evaluation"):
        kill_at_evaluation()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
