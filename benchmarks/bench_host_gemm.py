"""MKL's two ways of each of a 1x1 conv's products, at the block shapes of bench_mbconv.py: the
rules of ``host_matmul`` (csrc/mbconv/mbconv_driver.h) measured again.

A product into a large output:

- ``beta0``: ``torch.mm(a, b, out=out)``, what host_matmul runs (BLAS beta = 0);
- ``zero_beta1``: ``out.zero_().addmm_(a, b)``, what it ran before session 30, on the belief that
  MKL's beta = 0 clears the output in a slow pass of its own;
- with a residual's gradient to add: ``copy_beta1`` (``out.copy_(r).addmm_(a, b)``, what
  host_matmul runs) against ``beta0_add`` (the product, then ``out.add_(r)``).

Each shape gives two products, as the block runs them: the backward's ga2 (rows x C_out into E,
K = C; the expansion's has its shape at stride 1) and the input gradient (rows x E into C, K = E),
the latter also with the residual's gradient to add.

A weight gradient, a^T b summed over the rows (a of rows x m, b of rows x n), into the small m x n
output, two ways round:
- ``short_rows``: MKL's output has the shorter of m and n as its rows (for m > n, b^T a is
  computed and copied into the output transposed), what host_matmul runs since session 32;
- ``long_rows``: the longer side as its rows, what it ran before.
Each shape gives two: the projection's (C_out x E, over the output's rows) and the expansion's
(E x C, over the input's rows).

The output is reused, as the fused op reuses its host block cache, and a 64 MB buffer is written
(untimed) before every call so that the operands come from memory, as they do inside the block.
Medians of interleaved runs (benchmarks/timing.py).

    python benchmarks/bench_host_gemm.py [--repeats 15] [--cpu-isa avx2] [--json]

A new torch or MKL can move these figures: where ``zero_beta1`` comes out faster than ``beta0``,
or ``long_rows`` than ``short_rows``, host_matmul's rule wants measuring again inside the block
(bench_mbconv.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mbconv import SHAPES, Shape, pixels  # noqa: E402
from timing import ISA_ENV, hardware, interleaved_medians, isa_env, isa_record, malloc_env, restart_with  # noqa: E402

POLLUTE_BYTES = 64 << 20  # more than the last-level cache of the machines timed so far


def products(shape: Shape) -> list[tuple[str, int, int, int]]:
    """(name, rows, k, n) of the block's two MKL-sized products at ``shape``: into E from C, and
    the input gradient from E into C (at the input's rows)."""
    e = shape.expansion * shape.c
    rows_in, rows_out = pixels(shape)
    return [("ga2", rows_out, shape.c, e), ("grad_x", rows_in, e, shape.c)]


def weight_gradients(shape: Shape) -> list[tuple[str, int, int, int]]:
    """(name, rows, m, n) of the block's two weight gradients at ``shape``, each an m x n output
    summed over ``rows``: the projection's (C_out x E) and the expansion's (E x C)."""
    e = shape.expansion * shape.c
    rows_in, rows_out = pixels(shape)
    return [("grad_wp", rows_out, shape.c, e), ("grad_we", rows_in, e, shape.c)]


def reduction_versions(rows: int, m: int, n: int) -> dict:
    """out = a^T b with MKL's output the short side first, and the other way round."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, m, generator=g), torch.randn(rows, n, generator=g)
    out = torch.empty(m, n)
    as_is = lambda: torch.mm(a.t(), b, out=out)  # noqa: E731
    transposed = lambda: out.copy_(torch.mm(b.t(), a).t())  # noqa: E731
    if m <= n:
        return {"short_rows": as_is, "long_rows": transposed}
    return {"short_rows": transposed, "long_rows": as_is}


def versions(rows: int, k: int, n: int, with_addend: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, k, generator=g), torch.randn(k, n, generator=g)
    out, addend = torch.empty(rows, n), torch.randn(rows, n, generator=g)
    if with_addend:
        return {"copy_beta1": lambda: out.copy_(addend).addmm_(a, b),
                "beta0_add": lambda: torch.mm(a, b, out=out).add_(addend)}
    return {"beta0": lambda: torch.mm(a, b, out=out),
            "zero_beta1": lambda: out.zero_().addmm_(a, b)}


def run(repeats: int, shapes: list[Shape] = SHAPES) -> dict:
    pollute = torch.empty(POLLUTE_BYTES // 4)

    def milliseconds(fns: dict) -> dict:
        """Each version's median, with the operands pushed out of the caches before every call."""
        seconds = interleaved_medians(fns, repeats, "cpu", before_each=lambda: pollute.add_(1.0))
        return {version: 1e3 * s for version, s in seconds.items()}

    rows = []
    for shape in shapes:
        for name, m, k, n in products(shape):
            # only the input gradient has an addend: the residual's gradient
            for with_addend in (False, True) if name == "grad_x" else (False,):
                rows.append({"shape": shape.name, "product": name, "rows": m, "k": k, "n": n,
                             "addend": with_addend, "ms": milliseconds(versions(m, k, n, with_addend))})
        for name, r, m, n in weight_gradients(shape):
            rows.append({"shape": shape.name, "product": name, "rows": r, "m": m, "n": n,
                         "ms": milliseconds(reduction_versions(r, m, n))})
    return {"date": date.today().isoformat(), "device": "cpu", "hardware": hardware("cpu"),
            **isa_record("cpu"), "torch": torch.__version__, "repeats": repeats, "rows": rows}


def format_row(row: dict) -> str:
    (first, t0), (second, t1) = row["ms"].items()
    if "m" in row:  # a weight gradient
        size = f"{row['m']} x {row['n']} over {row['rows']}"
    else:
        size = f"{row['rows']} x {row['k']} -> {row['n']}"
    return (f"{row['shape']:<40} {row['product']:<7} {size:<20} {first} {t0:7.2f} ms  {second} {t1:7.2f} ms  "
            f"({t1 / t0:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cpu-isa", choices=sorted(ISA_ENV), help="hold ATen and MKL to this instruction set")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.exit(2, f"error: --repeats {args.repeats}: give at least 1\n")
    restart_with({**(isa_env(args.cpu_isa) if args.cpu_isa else {}), **malloc_env("cpu", adaptive=False)})
    result = run(args.repeats)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"MKL_ENABLE_INSTRUCTIONS={result['mkl_enable_instructions'] or '(unset)'}; "
          "the ratio is the second version's time over the first's")
    for row in result["rows"]:
        print(format_row(row))


if __name__ == "__main__":
    main()
