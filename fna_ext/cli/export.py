"""``python -m fna_ext.export``: a trained detector as a standalone model, TorchScript or ONNX,
that runs without fna_ext.

The exported model takes ``images``: float (N, 3, H, W), RGB in 0..255, already resized to the
export size (H, W), and returns
- ``boxes``: (N, A, 4) x1, y1, x2, y2 in the input's pixels, one decoded box per anchor;
- ``scores``: (N, A, C) per-class probabilities (SSDLite: softmax with background dropped;
  RetinaNet: sigmoid).
Normalisation, the head, the anchors (fixed by the export size) and box decoding are inside;
score thresholding and NMS are left to the runtime (class-wise NMS at IoU 0.6 for SSDLite and 0.5
for RetinaNet reproduces fna_ext's detections), as ONNX runtimes and serving stacks bring their
own. The command runs the exported file on the same input as the original and compares.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import cli
from ..atomic import atomic_write
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..tasks.detection.boxes import clip_boxes
from ..tasks.detection.model_file import load_detector

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class DecodedDetector(nn.Module):
    """A detector's dense outputs for a fixed input size: raw 0..255 RGB in, every anchor's
    decoded box and class probabilities out."""

    def __init__(self, detector: nn.Module, input_size: tuple[int, int]):
        super().__init__()
        self.detector = detector.eval()
        self.input_size = tuple(int(s) for s in input_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)
        with torch.no_grad():  # the anchors depend only on the input size: computed once
            probe = detector(torch.zeros(1, 3, *self.input_size))
        self.register_buffer("anchors", torch.cat(probe["anchors"]).float())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.detector.neck(self.detector.backbone_features((images - self.mean) / self.std))
        logits, deltas = self.detector.head(features)
        scores = self.detector.class_probabilities(torch.cat(logits, 1))
        deltas = torch.cat(deltas, 1).float()
        boxes = clip_boxes(self.detector.coder.decode(deltas, self.anchors), *self.input_size)
        return boxes, scores


def export_detector(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str,
                    input_size: tuple[int, int] | None = None, *, batch_size: int = 1) -> dict:
    """Writes ``checkpoint``'s detector to ``out`` in ``fmt`` and checks it: the exported file,
    run on a random input, must give the original's outputs. Returns the check's figures."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "onnx":
        _require_onnx()
    detector, payload = load_detector(checkpoint)
    size = tuple(input_size) if input_size else _trained_input_size(payload)
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"--input-size must be two sizes (H W) of at least 32 pixels, got {list(size)}")
    wrapper = DecodedDetector(detector, size).eval()
    example = torch.rand(batch_size, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    out = Path(out)
    with torch.no_grad():
        expected = wrapper(example)
    writer = _write_torchscript if fmt == "torchscript" else _write_onnx
    atomic_write(out, lambda tmp: writer(wrapper, example, Path(tmp)))
    runner = _run_torchscript if fmt == "torchscript" else _run_onnx
    got = runner(out, example)
    check = _compare(expected, got)
    if not check["matches"]:  # never leave a model behind that does not do what the original does
        out.unlink(missing_ok=True)
    return {"path": str(out), "format": fmt, "input_size": list(size), "anchors": int(wrapper.anchors.shape[0]),
            "classes": payload["class_names"], **check}


def _trained_input_size(payload: dict) -> tuple[int, int]:
    data = payload["config"]["data"]
    if data.get("input_size"):
        return tuple(int(s) for s in data["input_size"])
    short = int(data["short_side"])
    return (short, short)


def _require_onnx() -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"--format onnx needs the optional packages {missing}: "
                         "pip install 'fna_ext[onnx]' (or pip install onnx onnxscript onnxruntime)")


def _write_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit's deprecation notice: TorchScript is what was asked for
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))(example)


def _write_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(wrapper, (example,), str(path), input_names=["images"],
                      output_names=["boxes", "scores"], dynamic_axes={"images": {0: "batch"}},
                      external_data=False)


def _run_onnx(path: Path, example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(["boxes", "scores"], {"images": example.numpy()})
    return torch.from_numpy(boxes), torch.from_numpy(scores)


def _compare(expected, got) -> dict:
    box_error = (expected[0] - got[0]).abs().max().item()
    score_error = (expected[1] - got[1]).abs().max().item()
    return {"max_box_error_px": box_error, "max_score_error": score_error,
            "matches": box_error <= 1e-2 and score_error <= 1e-4}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fna_ext.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model_final.pt written by python -m fna_ext.train")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="the fixed input size (default: the training input size)")
    parser.add_argument("--out", help="output file (default: next to the checkpoint, "
                                      "model.torchscript.pt or model.onnx)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("model" + SUFFIX[args.format])
    report = export_detector(args.checkpoint, out, args.format, args.input_size)
    h, w = report["input_size"]
    print(f"wrote {report['path']} ({args.format}): images (N, 3, {h}, {w}) RGB 0..255 -> "
          f"boxes (N, {report['anchors']}, 4), scores (N, {report['anchors']}, {len(report['classes'])})")
    print(f"check against the original on the same input: max box difference "
          f"{report['max_box_error_px']:.2e} px, max score difference {report['max_score_error']:.2e}")
    if not report["matches"]:
        print(f"error: the exported model's outputs differ from the original's; {out} was removed",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
