"""Parity sweeps of the compiled ops on one device against float64 references, for every dtype:

- the fused sampled MBConv (``sampled_mbconv``: forward and the gradients of x and the three
  weights), ``depthwise_project`` and the two mixture ops (``mbconv_mixture``,
  ``depthwise_project_mixture``: forward and the gradients of x, hidden and the mixture weights)
  at every search shape of benchmarks/bench_mbconv.py, and dilated (DeepLab's output stride) at
  the first stride-1 one, against their pure-PyTorch references in float64 computed from the
  same (rounded) inputs, on the same device (PyTorch's own float64 kernels, cuDNN's on a GPU:
  independent of fna_ext's, and on an H200 a few seconds where the CPU took minutes);
- ``remap_copy`` (one call for a whole network) against the pure-PyTorch remap in float64, and
  bit for bit against it in the same dtype (a copy rounds nothing of its own);
- ``nms`` and ``batched_nms`` against torchvision.ops and against fna_ext's own reference:
  identical kept indices.

Each case records its largest absolute and relative error, its tolerance and pass/fail; the JSON
is rewritten after every case, so a run that is killed still leaves what it measured. On the CPU
the 16-bit dtypes of the MBConv ops are skipped (the CPU kernels are float32 and float64); on
CUDA a missing kernel is a failure.

**The MBConv tolerance.** At the search shapes no fixed element-wise tolerance holds even for
PyTorch's own ops: a batch-statistics BN's backward over 10^5 values per channel, and ReLU6's kinks
(a value rounded to the other side of 0 or 6 flips its gradient), put float32 eager PyTorch 10%
of the largest value off at single elements of x's gradient (SSDLite 80x80), bfloat16 25%. So each
tensor (the output and every gradient) is judged by its relative L2 error ||a - b|| / ||b||
against the float64 reference: it passes under the dtype's floor, or under EAGER_FACTOR times the
error of the op's pure-PyTorch reference run in the same dtype on the same device. A kernel as
accurate as eager PyTorch passes; a wrong row, channel or tile does not.

    python benchmarks/gpu_parity.py [--device cuda|cpu] [--tiny] [--dtypes float32 ...] [--kernels-only]
        [--out FILE]

``--kernels-only`` runs each compiled op forward and backward and compares nothing: the small run
benchmarks/gpu_check.py puts under compute-sanitizer. Exit status: 0 when no case failed, else 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
# the checkout's fna_ext (with the _C built in place next to it), not an installed copy
sys.path[:0] = [str(HERE), str(HERE.parent)]
from bench_mbconv import SHAPES, Shape, make_inputs  # noqa: E402

from fna_ext import _extension, build_network, mobilenet_v2, ops  # noqa: E402
from fna_ext.arch import Arch, Stage  # noqa: E402
from fna_ext.remap import plan_network  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Relative L2 errors always allowed: above what eager PyTorch shows at the tests' small shapes
# (about 1e-6 in float32, 1e-3 to 2e-2 in float16, 5e-3 to 5e-2 in bfloat16, gradients included).
REL_L2_FLOOR = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
EAGER_FACTOR = 4  # a fused kernel may keep intermediates in the low precision eager recomputes
NMS_SIZES = (65, 5000)  # a partial second 64-box word; many words and blocks
TINY_NMS_SIZES = (65, 300)
IOU_THRESHOLD = 0.5
REMAP_MODES = (("first", "center"), ("bn", "dilate"), ("net2net", "center"))
MIXTURE_KERNELS, MIXTURE_EXPANSIONS = (3, 5, 7), (3, 6)  # the search spaces' six candidates
DILATION = 2  # the dilated cases' (segmentation at output stride 16 dilates a stride-1 stage by 2)


# ---- comparing -------------------------------------------------------------------------------

def _max_errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(largest |a - b|, that divided by the largest |b|)."""
    if not b.numel():
        return 0.0, 0.0
    max_abs = (a - b).abs().max().item()
    return max_abs, max_abs / max(b.abs().max().item(), torch.finfo(torch.float64).tiny)


def _worse(current: float, value: float) -> float:
    return value if value != value or value > current else current  # NaN always wins


def compare_elementwise(results, references, rtol: float, atol: float) -> dict:
    """The worst over tensors of ``|a - b| / (atol + rtol |b|)``: 1 is the edge of the tolerance,
    as in torch.testing.assert_close."""
    worst = {"max_abs_err": 0.0, "max_rel_err": 0.0, "fraction_of_tolerance": 0.0}
    for a, b in zip(results, references):
        a, b = a.detach().cpu().double(), b.detach().cpu().double()
        fraction = (a - b).abs().div(atol + rtol * b.abs()).max().item() if b.numel() else 0.0
        max_abs, max_rel = _max_errors(a, b)
        for key, value in (("max_abs_err", max_abs), ("max_rel_err", max_rel), ("fraction_of_tolerance", fraction)):
            worst[key] = _worse(worst[key], value)
    passed = worst["fraction_of_tolerance"] <= 1.0  # False for NaN
    return {**worst, "tolerance": {"rtol": rtol, "atol": atol}, "status": "passed" if passed else "failed"}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64."""
    diff = (a.detach().cpu().double() - b).norm().item()
    norm = b.norm().item()
    return diff / norm if norm else (0.0 if diff == 0 else math.inf)


def compare_mbconv(fused: list, eager: list, reference: list, dtype: torch.dtype) -> dict:
    """See the module's docstring. The lists hold the output and the gradients; a gradient the
    reference lacks (x without a residual) must be absent or zero in the fused result."""
    worst = {"max_abs_err": 0.0, "max_rel_err": 0.0, "rel_l2_err": 0.0, "eager_rel_l2_err": 0.0,
             "fraction_of_tolerance": 0.0}
    for a, e, b in zip(fused, eager, reference):
        if b is None:
            if a is not None and a.abs().sum() > 0:
                return {**worst, "status": "failed", "error": "a gradient the reference does not have is nonzero"}
            continue
        if a is None:
            return {**worst, "status": "failed", "error": "the fused op gives no gradient where the reference has one"}
        b = b.detach().double()
        err, eager_err = rel_l2(a, b), rel_l2(e, b)
        tolerance = max(REL_L2_FLOOR[dtype], EAGER_FACTOR * eager_err if math.isfinite(eager_err) else 0.0)
        max_abs, max_rel = _max_errors(a.detach().cpu().double(), b)
        for key, value in (("max_abs_err", max_abs), ("max_rel_err", max_rel), ("rel_l2_err", err),
                           ("eager_rel_l2_err", eager_err), ("fraction_of_tolerance", err / tolerance)):
            worst[key] = _worse(worst[key], value)
    passed = worst["fraction_of_tolerance"] <= 1.0  # False for NaN
    return {**worst, "tolerance": {"rel_l2_floor": REL_L2_FLOOR[dtype], "eager_factor": EAGER_FACTOR},
            "status": "passed" if passed else "failed"}


def as_float64(t: torch.Tensor) -> torch.Tensor:
    leaf = t.detach().double()
    return leaf.requires_grad_() if t.requires_grad else leaf


RAN = {"status": "ran", "reason": "kernels only: nothing compared"}


def no_kernel(device: str, what: str) -> dict:
    """The CPU kernels cover fewer dtypes than the CUDA ones: skipped there, a failure on CUDA."""
    if device == "cpu":
        return {"status": "skipped", "reason": f"no CPU kernel for {what} (the CPU MBConv kernels are "
                                               "float32 and float64)"}
    return {"status": "failed", "error": f"no {device} kernel for {what}: the op would run its reference"}


# ---- the MBConv ops --------------------------------------------------------------------------

def tiny(shape: Shape) -> Shape:
    """The shape at 2 images and about a tenth of the size: the dry run's CPU-sized version."""
    return dataclasses.replace(shape, name=f"{shape.name} (tiny)", n=2, size=max(5, shape.size // 8))


def output_and_gradients(fn: Callable, inputs: list, grad: torch.Tensor) -> list:
    """``fn(*inputs)`` and its gradients with respect to the inputs that require them."""
    y = fn(*inputs)
    leaves = [t for t in inputs if t.requires_grad]
    return [y, *torch.autograd.grad(y, leaves, grad, allow_unused=True)]


def fused_eager_float64(op: Callable, reference: Callable, inputs: list, grad: torch.Tensor, dtype,
                        kernels_only: bool) -> dict:
    """The op fused, its reference in the same dtype and device, and its reference in float64 on
    the same device, compared. The mixture references call the public ops per candidate: they run
    unfused."""
    with ops.fused(True):
        fused = output_and_gradients(op, inputs, grad)
    if kernels_only:
        return RAN
    with ops.fused(False):
        eager = output_and_gradients(reference, inputs, grad)
        float64 = [t if t is None else t.cpu() for t in
                   output_and_gradients(reference, [as_float64(t) for t in inputs], grad.double())]
    return compare_mbconv(fused, eager, float64, dtype)


def _mbconv_kwargs(shape: Shape, dilation: int) -> dict:
    return dict(kernel_size=shape.kernel, expand_channels=shape.expansion * shape.c, stride=shape.stride,
                dilation=dilation)


def sampled_mbconv_case(shape: Shape, device: str, dtype: torch.dtype, kernels_only: bool = False,
                        dilation: int = 1) -> dict:
    x, weights, grad = make_inputs(shape, device, dtype)
    if not ops.takes_fused_path(x, shape.kernel):
        return no_kernel(device, f"sampled_mbconv in {dtype}")
    kwargs = _mbconv_kwargs(shape, dilation)
    return fused_eager_float64(lambda *t: ops.sampled_mbconv(*t, **kwargs),
                               lambda *t: ops.sampled_mbconv_reference(*t, **kwargs),
                               [x, *weights], grad, dtype, kernels_only)


def _activated_expansion(shape: Shape, device: str, dtype: torch.dtype) -> torch.Tensor:
    """A widest (e6) expansion after ReLU6, in 0..6, channels-last like the fused op's own."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.rand(shape.n, 6 * shape.c, shape.size, shape.size, generator=g) * 6
    return hidden.to(device=device, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()


def depthwise_project_case(shape: Shape, device: str, dtype: torch.dtype, kernels_only: bool = False,
                           dilation: int = 1) -> dict:
    x, (_, dw, pw), grad = make_inputs(shape, device, dtype)
    hidden = _activated_expansion(shape, device, dtype)
    if not ops.takes_fused_path(x, shape.kernel):
        return no_kernel(device, f"depthwise_project in {dtype}")
    e = shape.expansion * shape.c  # a channel slice of the shared expansion, as a mixture passes
    kwargs = dict(kernel_size=shape.kernel, stride=shape.stride, dilation=dilation)
    return fused_eager_float64(lambda x, h, dw, pw: ops.depthwise_project(x, h[:, :e], dw, pw, **kwargs),
                               lambda x, h, dw, pw: ops.depthwise_project_reference(x, h[:, :e], dw, pw, **kwargs),
                               [x, hidden, dw, pw], grad, dtype, kernels_only)


def _candidates(shape: Shape) -> list[tuple[int, int]]:
    return [(k, e * shape.c) for k in MIXTURE_KERNELS for e in MIXTURE_EXPANSIONS]


def _mixture_weights(device: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(len(MIXTURE_KERNELS) * len(MIXTURE_EXPANSIONS), generator=g), 0)
    return probs.to(device=device, dtype=dtype).requires_grad_()


def mbconv_mixture_case(shape: Shape, device: str, dtype: torch.dtype, kernels_only: bool = False,
                        dilation: int = 1) -> dict:
    x, weights, grad = make_inputs(shape, device, dtype)
    expand, dw, pw = (w.detach() for w in weights)  # an architecture step: the weights are frozen
    mix, candidates = _mixture_weights(device, dtype), _candidates(shape)
    if not ops.takes_fused_mixture(x, candidates, expand, dw, pw):
        return no_kernel(device, f"mbconv_mixture in {dtype}")
    kwargs = dict(candidates=candidates, stride=shape.stride, dilation=dilation)
    return fused_eager_float64(lambda *t: ops.mbconv_mixture(*t, **kwargs),
                               lambda *t: ops.mbconv_mixture_reference(*t, **kwargs),
                               [x, expand, mix, dw, pw], grad, dtype, kernels_only)


def depthwise_project_mixture_case(shape: Shape, device: str, dtype: torch.dtype, kernels_only: bool = False,
                                   dilation: int = 1) -> dict:
    x, (_, dw, pw), grad = make_inputs(shape, device, dtype)
    dw, pw = dw.detach(), pw.detach()
    hidden, mix, candidates = _activated_expansion(shape, device, dtype), _mixture_weights(device, dtype), \
        _candidates(shape)
    if not ops.takes_fused_mixture(x, candidates, dw, pw):
        return no_kernel(device, f"depthwise_project_mixture in {dtype}")
    kwargs = dict(candidates=candidates, stride=shape.stride, dilation=dilation)
    return fused_eager_float64(lambda *t: ops.depthwise_project_mixture(*t, **kwargs),
                               lambda *t: ops.depthwise_project_mixture_reference(*t, **kwargs),
                               [x, hidden, mix, dw, pw], grad, dtype, kernels_only)


MBCONV_OPS: dict[str, Callable[..., dict]] = {
    "sampled_mbconv": sampled_mbconv_case,
    "depthwise_project": depthwise_project_case,
    "mbconv_mixture": mbconv_mixture_case,
    "depthwise_project_mixture": depthwise_project_mixture_case,
}


# ---- remap_copy ------------------------------------------------------------------------------

def random_seed_network():
    """A narrow MobileNetV2 with random weights and BN statistics, so equal copies mean something."""
    net = mobilenet_v2(num_classes=None, width_mult=0.35)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.3)
    return net.eval()


def remapped_arch(seed_arch: Arch) -> Arch:
    """Kernel changes, skips, narrower and wider expansions and a deeper stage: every kind of map."""
    changes = [None, ["k7_e3", "skip", "k5_e9"], ["k3_e3"], None, ["k7_e6"] * 4, None, None]
    return Arch(tuple(Stage(s.in_channels, s.out_channels, tuple(ops_) if ops_ else s.ops, s.stride)
                      for s, ops_ in zip(seed_arch.stages, changes)))


def remap_case(seed, arch: Arch, width: str, kernel_mode: str, device: str, dtype: torch.dtype,
               kernels_only: bool = False) -> dict:
    if not _extension.has_kernel("remap_copy", device):
        return no_kernel(device, "remap_copy")
    plan = plan_network(seed, build_network(arch, None), width, kernel_mode)
    on_device = plan.apply(seed, build_network(arch, None).to(device=device, dtype=dtype)).state_dict()
    if kernels_only:
        return RAN
    same_dtype = plan.apply_reference(seed, build_network(arch, None).to(dtype)).state_dict()
    float64 = plan.apply_reference(seed, build_network(arch, None).double()).state_dict()
    keys = [k for k, v in float64.items() if v.is_floating_point()]
    # three roundings at most (the seed to dtype, a net2net scale to dtype, the product): 1.5 eps;
    # atol covers values below the smallest normal number
    finfo = torch.finfo(dtype)
    record = compare_elementwise([on_device[k] for k in keys], [float64[k] for k in keys], rtol=2 * finfo.eps,
                                 atol=finfo.tiny)
    unequal = [k for k in keys if not torch.equal(on_device[k].cpu(), same_dtype[k])]
    record["bitwise_equal_to_reference_in_dtype"] = not unequal
    if unequal:
        record.update(status="failed", error=f"{len(unequal)} tensors differ from the reference in {dtype} "
                                             f"(first: {unequal[0]})")
    return record


# ---- NMS -------------------------------------------------------------------------------------

_SCORE_BITS = {torch.float32: (torch.int32, 0x3000_0000), torch.float16: (torch.int16, 0x2000),
               torch.bfloat16: (torch.int16, 0x3000)}


def on_grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 8) / 8


def random_boxes(n: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes (x1, y1, x2, y2) as python_tests/test_nms.py draws them, scores and 7 classes.
    The coordinates lie on a 1/8 grid (below 141, so exact in every dtype here): every width,
    area, intersection and union is then exact in float32, and IoU tests agree however an
    implementation arranges them (inter > t * union, inter / union > t, torchvision's class
    offsets). The scores are consecutive bit patterns of positive floats, shuffled: distinct
    values in the dtype itself, so the kept order does not depend on how a tie would be broken."""
    g = torch.Generator().manual_seed(seed)
    xy = on_grid(torch.rand(n, 2, generator=g) * 100)
    wh = on_grid(torch.rand(n, 2, generator=g) * 40 + 0.5)
    int_dtype, base = _SCORE_BITS[dtype]
    scores = (torch.randperm(n, generator=g) + base).to(int_dtype).view(dtype)
    classes = torch.randint(0, 7, (n,), generator=g)
    return torch.cat([xy, xy + wh], 1).to(dtype), scores, classes


def torchvision_ops():
    """torchvision.ops, or the reason it is not importable."""
    try:
        import torchvision
        return torchvision.ops, f"torchvision {torchvision.__version__}"
    except Exception as err:  # absent, or built for another torch
        return None, f"torchvision does not import ({type(err).__name__}: {err})"


def kernel_indices(op: str, boxes, scores, classes, device: str) -> torch.Tensor:
    if op == "nms":
        return ops.nms(boxes.to(device), scores.to(device), IOU_THRESHOLD).cpu()
    return ops.batched_nms(boxes.to(device), scores.to(device), classes.to(device), IOU_THRESHOLD).cpu()


def torchvision_indices(tv_ops, op: str, boxes, scores, classes) -> torch.Tensor:
    # the kernels compute IoU in float32 (float64 for float64 boxes): the same arithmetic here, on
    # exactly upcast boxes, so a difference is a bug and not a rounding
    boxes, scores = boxes.float(), scores.float()
    if op == "nms":
        return tv_ops.nms(boxes, scores, IOU_THRESHOLD)
    return tv_ops.batched_nms(boxes, scores, classes, IOU_THRESHOLD)


def library_reference_indices(op: str, boxes, scores, classes) -> torch.Tensor:
    if op == "nms":
        return ops.nms_reference(boxes, scores, IOU_THRESHOLD)
    return ops.batched_nms_reference(boxes, scores, classes, IOU_THRESHOLD)


def identical_indices(result: torch.Tensor, expected: torch.Tensor) -> dict:
    same = torch.equal(result, expected.to(result.dtype))
    record = {"status": "passed" if same else "failed", "kept": len(result), "kept_expected": len(expected),
              "tolerance": "identical indices"}
    if not same:
        n = min(len(result), len(expected))
        first = next((i for i in range(n) if result[i] != expected[i]), n)
        record["error"] = f"kept indices differ from position {first} on"
    return record


def nms_case(op: str, reference: str, n: int, device: str, dtype: torch.dtype, tv, kernels_only: bool = False) -> dict:
    if not _extension.has_kernel(op, device):
        return no_kernel(device, op)
    tv_ops, tv_reason = tv
    if reference == "torchvision" and tv_ops is None:
        return {"status": "skipped", "reason": tv_reason}
    boxes, scores, classes = random_boxes(n, dtype, seed=n)
    result = kernel_indices(op, boxes, scores, classes, device)
    if kernels_only:
        return RAN
    expected = (torchvision_indices(tv_ops, op, boxes, scores, classes) if reference == "torchvision"
                else library_reference_indices(op, boxes, scores, classes))
    return identical_indices(result, expected)


# ---- the sweep -------------------------------------------------------------------------------

def cases(device: str, dtypes: list[torch.dtype], shapes: list[Shape], nms_sizes,
          kernels_only: bool = False) -> list[tuple[dict, Callable]]:
    """(what the case is, how to run it) for every op, shape or size, and dtype."""
    def named(op: str, case: str, dtype: torch.dtype) -> dict:
        return {"op": op, "case": case, "dtype": str(dtype).removeprefix("torch.")}

    found = []
    for shape in shapes:
        for dtype in dtypes:
            for op, case in MBCONV_OPS.items():
                found.append((named(op, shape.name, dtype),
                              lambda case=case, shape=shape, dtype=dtype: case(shape, device, dtype, kernels_only)))
    # dilation (stride 1 only) at one shape: the dilated kernels' indexing, at little extra time
    dilated = next((s for s in shapes if s.stride == 1), None)
    for dtype in dtypes if dilated is not None else ():
        for op, case in MBCONV_OPS.items():
            found.append((named(op, f"{dilated.name} dilation {DILATION}", dtype),
                          lambda case=case, dtype=dtype: case(dilated, device, dtype, kernels_only, DILATION)))
    seed = random_seed_network()
    arch = remapped_arch(seed.arch)
    for width, kernel_mode in REMAP_MODES:
        for dtype in dtypes:
            found.append((named("remap_copy", f"width {width}, kernel {kernel_mode}", dtype),
                          lambda w=width, k=kernel_mode, dtype=dtype:
                          remap_case(seed, arch, w, k, device, dtype, kernels_only)))
    tv = torchvision_ops()
    for op in ("nms", "batched_nms"):
        for reference in ("fna_ext reference",) if kernels_only else ("torchvision", "fna_ext reference"):
            for n in nms_sizes:
                for dtype in dtypes:
                    found.append((named(op, f"N={n}" if kernels_only else f"N={n} vs {reference}", dtype),
                                  lambda op=op, r=reference, n=n, dtype=dtype:
                                  nms_case(op, r, n, device, dtype, tv, kernels_only)))
    return found


def run_case(describe: dict, run: Callable[[], dict], device: str) -> dict:
    started = time.perf_counter()
    try:
        record = run()
        if device == "cuda":
            torch.cuda.synchronize()  # an asynchronous kernel error belongs to this case
    except Exception as err:  # a failing kernel must not stop the sweep of the others
        message = str(err).splitlines()[0] if str(err) else ""
        record = {"status": "failed", "error": f"{type(err).__name__}: {message}"}
    return {**describe, **record, "seconds": round(time.perf_counter() - started, 3)}


def write_json(path: Path, data: dict) -> None:
    """Atomically: a reader (or a kill) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def describe_case(record: dict) -> str:
    figures = ""
    if "rel_l2_err" in record:
        figures = f"  rel L2 {record['rel_l2_err']:.2g} (eager {record['eager_rel_l2_err']:.2g}),"
    if "fraction_of_tolerance" in record:
        figures += f"  max abs {record['max_abs_err']:.3g}, {100 * record['fraction_of_tolerance']:.0f}% of tolerance"
    note = record.get("error") or record.get("reason") or ""
    return (f"{record['status']:<7} {record['op']:<26} {record['dtype']:<9} {record['case']}{figures}"
            + (f"  ({note})" if note else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="2 images and about a tenth of the size (CPU dry run)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--kernels-only", action="store_true",
                        help="run each compiled op, forward and backward, and compare nothing (for compute-sanitizer)")
    parser.add_argument("--out", type=Path, help="write the cases as JSON here, after each case")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    # the detection shapes: dilation has its own case below, and the SE blocks their cuda test
    plain = [s for s in SHAPES if s.dilation == 1 and not s.se_channels]
    shapes = [tiny(s) for s in plain] if args.tiny else plain
    result = {"device": args.device, "tiny": args.tiny, "dtypes": args.dtypes, "kernels_only": args.kernels_only,
              "torchvision": torchvision_ops()[1], "finished": False, "cases": []}
    for describe, run in cases(args.device, [DTYPES[d] for d in args.dtypes], shapes,
                               TINY_NMS_SIZES if args.tiny else NMS_SIZES, args.kernels_only):
        record = run_case(describe, run, args.device)
        result["cases"].append(record)
        print(describe_case(record), flush=True)
        if args.out:
            write_json(args.out, result)
    result["finished"] = True
    if args.out:
        write_json(args.out, result)
    return 1 if any(c["status"] == "failed" for c in result["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
