"""``python -m fna_ext.export``: a trained model (``model_final.pt``) as a standalone TorchScript or
ONNX model that runs without fna_ext, checked against the original on the same input.

A detector exports as: ``images`` float (N, 3, H, W), RGB in 0..255, already resized to the
export size -> ``boxes`` (N, A, 4) x1, y1, x2, y2 in the input's pixels, one decoded box per
anchor, and ``scores`` (N, A, C) per-class probabilities (SSDLite: softmax with background
dropped; RetinaNet: sigmoid). Normalisation, the head, the anchors and box decoding are inside;
score thresholding and NMS are left to the runtime (class-wise NMS at IoU 0.6 for SSDLite and 0.5
for RetinaNet reproduces fna_ext's detections).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import ArgumentParser, check_output_file, run
from ..engine.export import FORMATS, SUFFIX, export_model


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m fna_ext.export", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model_final.pt written by python -m fna_ext.train")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="the fixed input size (default: the training input size)")
    parser.add_argument("--out", help="output file (default: next to the checkpoint, "
                                      "model.torchscript.pt or model.onnx)")
    args = parser.parse_args(argv)
    out = check_output_file(args.out or Path(args.checkpoint).with_name("model" + SUFFIX[args.format]))
    report = export_model(args.checkpoint, out, args.format, args.input_size)
    h, w = report["input_size"]
    outputs = ", ".join(f"{name} (N, {', '.join(map(str, shape[1:]))})" for name, shape in report["outputs"].items())
    print(f"wrote {report['path']} ({args.format}): images (N, 3, {h}, {w}) RGB 0..255 -> {outputs}")
    print("check against the original on the same input: largest difference "
          + ", ".join(f"{name} {error:.2e}" for name, error in report["max_errors"].items()))
    if not report["matches"]:
        print(f"error: the exported model's outputs differ from the original's; {out} was removed",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run(main)
