"""A trained model of any task as a standalone model, TorchScript or ONNX, that runs without
fna_ext. The task supplies the wrapper (:meth:`fna_ext.tasks.Task.export_module`): a module for
a fixed input size that takes ``images``, float (N, 3, H, W) RGB in 0..255, and names its outputs
and the differences they may show. The export runs the written file on the same input as the
original and compares; a file that does not match is removed.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_write
from ..tasks import load_model_file

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str,
                 input_size: tuple[int, int] | None = None, *, batch_size: int = 1) -> dict:
    """Writes ``checkpoint``'s model to ``out`` in ``fmt`` and checks it: the exported file,
    run on a random input, must give the original's outputs. Returns the check's figures."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "onnx":
        _require_onnx()
    task, model, payload = load_model_file(checkpoint)
    size = tuple(input_size) if input_size else task.export_input_size(payload)
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"--input-size must be two sizes (H W) of at least 32 pixels, got {list(size)}")
    wrapper = task.export_module(model, payload, size).eval()
    example = torch.rand(batch_size, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    out = Path(out)
    with torch.no_grad():
        expected = wrapper(example)
    writer = _write_torchscript if fmt == "torchscript" else _write_onnx
    atomic_write(out, lambda tmp: writer(wrapper, example, Path(tmp)))
    runner = _run_torchscript if fmt == "torchscript" else _run_onnx
    got = runner(out, example)
    check = _compare(wrapper, expected, got)
    if not check["matches"]:  # never leave a model behind that does not do what the original does
        out.unlink(missing_ok=True)
    return {"path": str(out), "format": fmt, "input_size": list(size),
            "outputs": {name: list(t.shape) for name, t in zip(wrapper.output_names, expected)},
            "classes": payload.get("class_names"), **check}


def _require_onnx() -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"--format onnx needs the optional packages {missing}: "
                         "pip install 'fna_ext[onnx]' (or pip install onnx onnxscript onnxruntime)")


def _write_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit's deprecation notice: TorchScript is what was asked for
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        return torch.jit.load(str(path))(example)


def _write_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(wrapper, (example,), str(path), input_names=["images"],
                      output_names=list(wrapper.output_names), dynamic_axes={"images": {0: "batch"}},
                      external_data=False)


def _run_onnx(path: Path, example: torch.Tensor) -> tuple[torch.Tensor, ...]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return tuple(torch.from_numpy(t) for t in session.run(names, {"images": example.numpy()}))


def _compare(wrapper: nn.Module, expected, got) -> dict:
    """The largest difference of each output (``max_errors``, by output name), and whether every
    one is within the wrapper's tolerance."""
    errors = {name: (e - g).abs().max().item() for name, e, g in zip(wrapper.output_names, expected, got)}
    matches = all(errors[name] <= tol for name, tol in zip(wrapper.output_names, wrapper.tolerances))
    return {"max_errors": errors, "matches": matches}
