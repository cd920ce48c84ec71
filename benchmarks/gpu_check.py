"""Everything to check on a CUDA machine that is lent for a few minutes, in one command:

    python benchmarks/gpu_check.py --out DIR [--dry-run] [--cuda-arch 9.0] [--stages ...] [--bench-parts ...]

1. build   builds the extension in place with CUDA for sm_90 (--cuda-arch) on every core
           (TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=<cores> FORCE_CUDA=1 python setup.py build_ext --inplace);
2. info    ``python -m fna_ext.info --json``: the extension loaded and every op has a CUDA kernel;
3. pytest  the tests marked ``cuda`` (pytest -m cuda), counts from the JUnit XML;
4. parity  every op and dtype on the GPU against a float64 reference (PyTorch's, on the GPU; gpu_parity.py);
5. memcheck  compute-sanitizer --tool memcheck over a small run of every kernel;
6. bench   bench_mbconv (fused vs eager vs torch.compile), the copy bandwidth and the fused op's share
           of it, and whole search steps (benchmarks/gpu_bench.py);
7. summary DIR/summary.md (one table, with the targets met or missed) and DIR/results.json.

Each stage runs as a subprocess with its own time limit (a hang costs that stage only) and
results.json is rewritten after every stage, so a kill still leaves the stages before it. The
limits add up to less than 8 minutes; time a stage leaves unused goes to the ones after it.
Logs of every stage are in DIR.

``--stages build,info,pytest,bench`` runs those stages only (the others are reported as not
selected) and ``--bench-parts "mbconv float32,profile"`` those parts of the bench stage only
(gpu_bench.py --parts): a rerun after a fix, in what is left of a session's device time.

``--dry-run`` runs every stage on the CPU with tiny shapes: it skips the build when fna_ext._C
already imports (else builds without CUDA), skips memcheck (no GPU) and torch.compile.
python_tests/test_gpu_check.py runs it.

Exit status: 0 when every stage that ran passed (missed targets are reported, not failures), else 1.
This script itself needs only the standard library; the stages import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CUDA_ARCH = "9.0"  # the H200 (Hopper) this check was written for; --cuda-arch changes it
# Seconds per stage. On the GPU they add up to 470, under the 8 minutes the check may take;
# a stage that finishes early passes its remaining time on (deadlines are cumulative).
# The build gets the most: its critical path is one file, csrc/mbconv/mbconv_cpu.cpp (three
# target_clones of every CPU kernel), about 3.5 minutes on one core of the 2-core CI machine,
# however many cores the build has.
GPU_SHARES = {"build": 265, "info": 15, "pytest": 55, "parity": 45, "memcheck": 30, "bench": 60}
# The dry run has no such limit; these only stop a hang.
DRY_RUN_SHARES = {"build": 900, "info": 60, "pytest": 120, "parity": 120, "memcheck": 60, "bench": 180}
PASSING = ("passed", "skipped")
NEEDS_EXTENSION = ("pytest", "parity", "memcheck", "bench")


# ---- running a stage's command -----------------------------------------------------------------

@dataclass
class Run:
    rc: int | None  # None when it was killed at its time limit
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.rc is None


@dataclass
class Context:
    out: Path
    dry_run: bool
    cuda_arch: str = CUDA_ARCH
    python: str = sys.executable
    results: dict = field(default_factory=dict)
    bench_parts: str | None = None  # gpu_bench.py --parts, or every part

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        # the checkout's fna_ext and the _C built in place in it, also where another is installed
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"  # a killed stage's log keeps what it printed
        if self.dry_run:
            # the dry run checks code paths, not speed: on a small shared machine OpenMP threads
            # waiting on each other for busy cores made tiny ops take seconds
            env["OMP_NUM_THREADS"] = "1"
        env.update(extra or {})
        return env

    def run(self, command: list[str], log_name: str, limit: float, extra_env: dict | None = None,
            stdout_name: str | None = None) -> Run:
        """Runs ``command`` in the repository with its output in DIR/log_name (stdout in
        DIR/stdout_name if given), killing its whole process group at ``limit`` seconds: a build's
        compilers or a benchmark's compile workers must not outlive it."""
        started = time.perf_counter()
        with open(self.out / log_name, "wb") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            stdout = open(self.out / stdout_name, "wb") if stdout_name else log
            try:
                proc = subprocess.Popen(command, cwd=REPO, env=self.env(extra_env), stdout=stdout, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                try:
                    rc = proc.wait(timeout=max(limit, 1))
                except subprocess.TimeoutExpired:
                    rc = None
                finally:
                    _kill_group(proc)
            finally:
                if stdout is not log:
                    stdout.close()
        return Run(rc, time.perf_counter() - started)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone
    proc.wait()


def last_lines(path: Path, count: int = 1) -> str:
    if not path.exists():
        return ""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def fresh(path: Path) -> Path:
    """``path`` with any file of an earlier run into the same folder removed: a stage that dies
    before writing must not be credited with the last run's results."""
    path.unlink(missing_ok=True)
    return path


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def killed_at_limit(limit: float, log: str) -> dict:
    return {"status": "timed out", "detail": f"killed at its {limit:.0f} s limit; see {log}"}


# ---- 1. build ----------------------------------------------------------------------------------

def extension_imports(ctx: Context) -> bool:
    probe = subprocess.run([ctx.python, "-c", "import fna_ext._C"], cwd=REPO, env=ctx.env(),
                           capture_output=True, timeout=120)
    return probe.returncode == 0


def stage_build(ctx: Context, limit: float) -> dict:
    if ctx.dry_run and extension_imports(ctx):
        return {"status": "skipped", "detail": "skipped: already built"}
    cores = str(os.cpu_count() or 1)
    settings = {"TORCH_CUDA_ARCH_LIST": ctx.cuda_arch, "MAX_JOBS": cores, "FORCE_CUDA": "0" if ctx.dry_run else "1"}
    run = ctx.run([ctx.python, "setup.py", "build_ext", "--inplace"], "build.log", limit, settings)
    record = {"seconds_to_build": round(run.seconds, 1), "settings": settings}
    if run.timed_out:
        return {**record, **killed_at_limit(limit, "build.log")}
    if run.rc != 0:
        return {**record, "status": "failed",
                "detail": f"setup.py exited {run.rc}: {last_lines(ctx.out / 'build.log')}"}
    if not extension_imports(ctx):
        return {**record, "status": "failed", "detail": "built, but fna_ext._C does not import (see build.log)"}
    kind = "CPU only" if ctx.dry_run else f"with CUDA for sm_{ctx.cuda_arch.replace('.', '')}"
    return {**record, "status": "passed", "detail": f"built {kind} in {run.seconds:.0f} s on {cores} cores"}


# ---- 2. info -----------------------------------------------------------------------------------

def info_problems(info: dict, device: str, kernels: dict, missing: dict, dry_run: bool) -> list[str]:
    problems = []
    if not info.get("extension_loaded"):
        problems.append(f"the extension did not load ({info.get('extension_how')}: {info.get('extension_error')})")
    if not dry_run and not info.get("cuda_available"):
        problems.append("torch sees no CUDA device")
    if device not in (info.get("extension_devices") or []):
        problems.append(f"the extension has no {device} kernels")
    if not kernels.get(device):
        problems.append(f"no op has a {device} kernel")
    if missing.get(device):
        problems.append(f"no {device} kernel for {', '.join(missing[device])}")
    return problems


def stage_info(ctx: Context, limit: float) -> dict:
    # --no-compile: report what the build produced; a first-use compile would hide a failed build
    run = ctx.run([ctx.python, "-m", "fna_ext.info", "--json", "--no-compile"], "info.log", limit,
                  stdout_name="info.json")
    if run.timed_out:
        return killed_at_limit(limit, "info.log")
    info = read_json(ctx.out / "info.json")  # ctx.run rewrote it
    if run.rc != 0 or info is None:
        return {"status": "failed", "detail": f"fna_ext.info exited {run.rc}: {last_lines(ctx.out / 'info.log')}"}
    # fna_ext.info lists the kernels per device from the dispatcher, and the ops a device lacks
    kernels, missing = info["extension_kernels"], info["extension_missing_kernels"]
    problems = info_problems(info, ctx.device, kernels, missing, ctx.dry_run)
    record = {"info": info, "kernels": kernels, "missing_kernels": missing}
    if problems:
        return {**record, "status": "failed", "detail": "; ".join(problems)}
    return {**record, "status": "passed",
            "detail": f"{len(kernels[ctx.device])} ops with a {ctx.device} kernel, none missing"}


# ---- 3. pytest -m cuda -------------------------------------------------------------------------

def cuda_test_files() -> list[Path]:
    """The test files with tests marked cuda. Only those are collected: a file that cannot import
    an optional dependency (pycocotools on a bare GPU machine) is no CUDA failure."""
    return sorted(p for p in (REPO / "python_tests").glob("test_*.py") if "pytest.mark.cuda" in p.read_text())


def junit_counts(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def stage_pytest(ctx: Context, limit: float) -> dict:
    xml = fresh(ctx.out / "pytest_cuda.xml")
    files = [str(p.relative_to(REPO)) for p in cuda_test_files()]
    # -o addopts=: the GPU machine has no pytest-xdist, and the cuda tests are few
    run = ctx.run([ctx.python, "-m", "pytest", "-o", "addopts=", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                   "--junitxml", str(xml),
                   *files], "pytest.log", limit)
    counts = junit_counts(xml)
    record = {"files": files, "counts": counts, "rc": run.rc}
    if run.timed_out:
        return {**record, **killed_at_limit(limit, "pytest.log")}
    if counts is None:
        return {**record, "status": "failed", "detail": f"no JUnit XML (pytest exited {run.rc}); see pytest.log"}
    figures = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failures", "errors", "skipped"))
    # on CPU every cuda test skips (the dry run says so); on the GPU they must run
    ran_enough = counts["passed"] > 0 or ctx.dry_run
    clean_exit = run.rc == 0 or (ctx.dry_run and run.rc == 5)  # 5: pytest collected nothing
    ok = clean_exit and counts["failures"] == counts["errors"] == 0 and ran_enough
    detail = figures + ("" if ran_enough else " (none ran on the GPU)")
    if ctx.dry_run:
        detail += " (on CPU every cuda test skips)"
    return {**record, "status": "passed" if ok else "failed", "detail": detail}


# ---- 4. parity -----------------------------------------------------------------------------------

def case_counts(cases: list[dict]) -> dict:
    return {s: sum(c["status"] == s for c in cases) for s in ("passed", "failed", "skipped")}


def parity_figures(result: dict) -> str:
    counts = case_counts(result["cases"])
    fractions = [c["fraction_of_tolerance"] for c in result["cases"] if "fraction_of_tolerance" in c]
    worst = f"; worst {100 * max(fractions):.0f}% of its tolerance" if fractions else ""
    return ", ".join(f"{n} {s}" for s, n in counts.items()) + f" cases{worst}"


def run_json_script(ctx: Context, script: str, name: str, limit: float,
                    extra: list[str] = ()) -> tuple[Run, dict | None]:
    """Runs a benchmarks/ script that writes DIR/<name>.json (with --tiny in a dry run), logging to
    DIR/<name>.log; returns the run and what it wrote, or None."""
    path = fresh(ctx.out / f"{name}.json")
    run = ctx.run([ctx.python, str(HERE / script), "--device", ctx.device, "--out", str(path)]
                  + (["--tiny"] if ctx.dry_run else []) + list(extra), f"{name}.log", limit)
    return run, read_json(path)


def nothing_written(ctx: Context, run: Run, name: str, what: str) -> dict:
    return {"result": None, "status": "timed out" if run.timed_out else "failed",
            "detail": f"{what}; see {name}.log: {last_lines(ctx.out / f'{name}.log')}"}


def stage_parity(ctx: Context, limit: float) -> dict:
    run, result = run_json_script(ctx, "gpu_parity.py", "parity", limit)
    if result is None:
        return nothing_written(ctx, run, "parity", "no cases written")
    record = {"result": result}
    counts = case_counts(result["cases"])
    if run.timed_out:
        return {**record, "status": "timed out", "detail": f"{parity_figures(result)} before the {limit:.0f} s limit"}
    ok = run.rc == 0 and result["finished"] and counts["failed"] == 0 and counts["passed"] > 0
    return {**record, "status": "passed" if ok else "failed", "detail": parity_figures(result)}


# ---- 5. compute-sanitizer memcheck ----------------------------------------------------------------

def cuda_home() -> str | None:
    """fna_ext's own toolkit lookup (CUDA_HOME/CUDA_PATH, nvcc behind links and wrappers); its
    build config needs only the standard library, so this process need not import torch."""
    home, _problem = runpy.run_path(str(REPO / "fna_ext" / "_build_config.py"))["find_cuda_home"]()
    return home


def find_compute_sanitizer(ctx: Context) -> tuple[str | None, list[str]]:
    """(its path or None, where it was looked for): PATH, then the CUDA toolkit's bin/."""
    places = ["PATH"]
    found = shutil.which("compute-sanitizer")
    if found:
        return found, places
    home = cuda_home()
    if home:
        candidate = Path(home) / "bin" / "compute-sanitizer"
        places.append(str(candidate))
        if candidate.is_file():
            return str(candidate), places
    return None, places


def memcheck_command(ctx: Context, sanitizer: str) -> list[str]:
    # a small run of every kernel, forward and backward, with no references (each instrumented
    # launch is slow): the parity sweep's cases at their tiny sizes, in float32 and bfloat16 (one
    # dtype per element size; float16 indexes memory exactly as bfloat16 does)
    script = [ctx.python, str(HERE / "gpu_parity.py"), "--device", "cuda", "--tiny", "--kernels-only",
              "--dtypes", "float32", "bfloat16", "--out", str(fresh(ctx.out / "memcheck_kernels.json"))]
    # --report-api-errors no: torch probes the driver with calls that fail by design; a kernel's
    # own launch error still fails the script. --error-exitcode marks memory errors apart from
    # the script's own exit status.
    return [sanitizer, "--tool", "memcheck", "--report-api-errors", "no", "--error-exitcode", "99",
            "--print-limit", "20", *script]


def memcheck_summary(log: Path) -> int | None:
    """The error count of memcheck's 'ERROR SUMMARY: N errors' line."""
    found = re.findall(r"ERROR SUMMARY: (\d+) error", log.read_text(errors="replace")) if log.exists() else []
    return int(found[-1]) if found else None


def stage_memcheck(ctx: Context, limit: float) -> dict:
    sanitizer, places = find_compute_sanitizer(ctx)
    command = memcheck_command(ctx, sanitizer or "compute-sanitizer")
    record = {"command": command, "compute_sanitizer": sanitizer, "looked_in": places}
    if ctx.dry_run:
        return {**record, "status": "skipped", "detail": "skipped: no GPU"}
    if sanitizer is None:
        return {**record, "status": "skipped", "detail": f"skipped: compute-sanitizer not found ({', '.join(places)})"}
    # without the caching allocator every tensor is its own allocation, so memcheck sees the end
    # of each one instead of the end of a cached block
    run = ctx.run(command, "memcheck.log", limit, {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
    errors = memcheck_summary(ctx.out / "memcheck.log")
    record.update(ran=True, errors=errors, rc=run.rc)
    if run.timed_out:
        return {**record, **killed_at_limit(limit, "memcheck.log")}
    if errors is None:
        return {**record, "status": "failed", "detail": f"no ERROR SUMMARY (exit {run.rc}); see memcheck.log"}
    # the script exits 1 when a kernel raised (the parity stage says which); 99 is memcheck's
    ok = errors == 0 and run.rc == 0
    detail = f"{errors} errors" + (f" (the kernel script exited {run.rc}; see memcheck.log)" if run.rc else "")
    return {**record, "status": "passed" if ok else "failed", "detail": detail}


# ---- 6. benchmarks -----------------------------------------------------------------------------

def copy_bandwidth(parts: dict) -> float | None:
    """Bytes per second of the device's copy, from the first part that measured it."""
    return next((p["copy_bandwidth_bytes_per_s"] for p in parts.values() if p.get("copy_bandwidth_bytes_per_s")),
                None)


def bench_figures(result: dict) -> str:
    parts = result["parts"]
    figures = [f"{name}: {part['status']}" for name, part in parts.items()]
    copy = copy_bandwidth(parts)
    if copy:
        figures.append(f"copy bandwidth {copy / 1e9:.0f} GB/s")
    return "; ".join(figures)


def stage_bench(ctx: Context, limit: float) -> dict:
    extra = ["--parts", ctx.bench_parts] if ctx.bench_parts else []
    run, result = run_json_script(ctx, "gpu_bench.py", "bench", limit, extra)
    if result is None:
        return nothing_written(ctx, run, "bench", "nothing measured")
    record = {"result": result}
    if run.timed_out:
        return {**record, "status": "timed out", "detail": f"{bench_figures(result)} before the {limit:.0f} s limit"}
    failed = [name for name, part in result["parts"].items() if part["status"] == "failed"]
    ok = run.rc == 0 and result["finished"] and not failed
    return {**record, "status": "passed" if ok else "failed", "detail": bench_figures(result)}


# ---- targets -----------------------------------------------------------------------------------

def _bench(results: dict) -> dict:
    return (results["stages"].get("bench") or {}).get("result") or {}


def _bench_part(results: dict, name: str) -> dict | None:
    return (_bench(results).get("parts") or {}).get(name)


def not_measured(target: dict, part: dict | None, reason: str | None = None) -> dict:
    if reason is None:
        reason = ("the benchmark did not get to it" if part is None
                  else part.get("reason") or part.get("error") or part["status"])
    return {**target, "status": "not measured", "measured": None, "figure": f"not measured: {reason}"}


def row_target(results: dict, name: str, part_name: str, key: str, threshold: float, unit: str) -> dict:
    """Met when every row of the part reaches ``threshold``; the worst row is reported."""
    part = _bench_part(results, part_name)
    rows = [r for r in (part or {}).get("rows", []) if key in r]
    target = {"target": name, "threshold": threshold}
    if not rows:
        compile_skipped = key == "speedup_vs_compile" and part and part.get("rows") and not _bench(results)["compile"]
        return not_measured(target, part, "torch.compile was skipped (dry run)" if compile_skipped else None)
    worst = min(rows, key=lambda r: r[key])
    return {**target, "measured": worst[key], "worst_case": f"{worst['shape']['name']}, {worst['mode']}",
            "status": "met" if worst[key] >= threshold else "missed",
            "figure": f"{_format(worst[key], unit)} (worst: {worst['shape']['name']}, {worst['mode']})"}


def search_step_target(results: dict) -> dict:
    part = _bench_part(results, "search step")
    target = {"target": "search cycle >= 2x the reference (in memory)", "threshold": 2.0}
    if not part or part["status"] != "passed":
        return not_measured(target, part)
    speedup = part["speedup"]["search cycle images/s"]
    return {**target, "measured": speedup, "status": "met" if speedup >= 2.0 else "missed",
            "figure": f"{speedup:.2f}x ({part['rows']['fused']['search cycle images/s']:.1f} vs "
                      f"{part['rows']['reference']['search cycle images/s']:.1f} images/s)"}


def evaluate_targets(results: dict) -> list[dict]:
    targets = []
    for dtype in ("float32", "bfloat16"):
        targets.append(row_target(results, f"fused >= 3x eager, fwd+bwd, search shapes, {dtype}", f"mbconv {dtype}",
                                  "speedup_vs_eager", 3.0, "x"))
        targets.append(row_target(results, f"fused >= 1.5x torch.compile, fwd+bwd, search shapes, {dtype}",
                                  f"mbconv {dtype}", "speedup_vs_compile", 1.5, "x"))
    for dtype in ("float32", "bfloat16"):
        targets.append(row_target(results, f">= 60% of copy bandwidth at N=256 56x56 C=24 k7 e6, {dtype}",
                                  f"bandwidth {dtype}", "fraction_of_copy_bandwidth", 0.6, "%"))
    targets.append(search_step_target(results))
    return targets


def _format(value: float, unit: str) -> str:
    return f"{100 * value:.0f}%" if unit == "%" else f"{value:.2f}{unit}"


# ---- environment -------------------------------------------------------------------------------

def command_output(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return ""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment() -> dict:
    gpu = command_output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    name, _, driver = gpu.splitlines()[0].partition(", ") if gpu else ("", "", "")
    commit = command_output(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(command_output(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "gpu": name or None,
            "driver": driver or None, "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "commit": (commit + (" (with uncommitted changes)" if dirty else ""))
            or None}


def add_versions(results: dict) -> None:
    info = (results["stages"].get("info") or {}).get("info") or {}
    results["environment"].update(torch=info.get("torch_version"), torch_cuda=info.get("torch_cuda_version"),
                                  nvcc=info.get("nvcc_version"))


# ---- summary -----------------------------------------------------------------------------------

STAGE_TITLES = {"build": "1. build", "info": "2. extension info", "pytest": "3. pytest -m cuda",
                "parity": "4. parity vs float64", "memcheck": "5. compute-sanitizer memcheck",
                "bench": "6. benchmarks", "summary": "7. summary"}


def header_lines(results: dict) -> list[str]:
    env = results["environment"]
    gpu = f"{env['gpu']} (driver {env['driver']})" if env["gpu"] else "none (nvidia-smi found no GPU)"
    mode = "**dry run** on the CPU with tiny shapes; the targets are for the GPU" if results["dry_run"] else "GPU run"
    return [f"# fna_ext GPU check{' (dry run)' if results['dry_run'] else ''}", "",
            f"- date: {env['date']}; {mode}",
            f"- GPU: {gpu}; CPU: {env['cpu']}, {env['cores']} cores",
            f"- torch {env.get('torch')}, CUDA {env.get('torch_cuda') or 'none'} "
            f"(nvcc {env.get('nvcc') or 'not found'}), Python {env['python']}; commit {env['commit']}",
            f"- overall: **{'PASSED' if results['passed'] else 'FAILED'}** "
            f"(exit status {0 if results['passed'] else 1})",
            ""]


def main_table(results: dict) -> list[str]:
    lines = ["| check | result | figures |", "| --- | --- | --- |"]
    for name, stage in results["stages"].items():
        seconds = f" ({stage['seconds']:.0f} s)" if "seconds" in stage else ""
        lines.append(f"| {STAGE_TITLES[name]} | {stage['status']}{seconds} | {_cell(stage.get('detail', ''))} |")
    for target in results["targets"]:
        lines.append(f"| target: {target['target']} | {target['status']} | {_cell(target['figure'])} |")
    return lines + [""]


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def tolerance_text(tolerance) -> str:
    if isinstance(tolerance, dict) and "rel_l2_floor" in tolerance:
        return f"rel L2 <= max({tolerance['rel_l2_floor']:.0e}, {tolerance['eager_factor']}x eager)"
    if isinstance(tolerance, dict):
        return f"rtol {tolerance['rtol']:.2g}, atol {tolerance['atol']:.2g}"
    return tolerance or ""


def parity_table(results: dict) -> list[str]:
    cases = ((results["stages"].get("parity") or {}).get("result") or {}).get("cases") or []
    if not cases:
        return []
    lines = ["## Parity cases", "",
             "Errors against the float64 reference (PyTorch's own ops in float64 on the same device); \"eager\": "
             "the op's pure-PyTorch reference in the same dtype and device (benchmarks/gpu_parity.py explains the "
             "tolerances).", "",
             "| op | case | dtype | status | max abs err | max rel err | rel L2 err | eager rel L2 | tolerance "
             "| of tolerance |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for c in cases:
        figures = [f"{c[k]:.2g}" if k in c else "" for k in ("max_abs_err", "max_rel_err", "rel_l2_err",
                                                                "eager_rel_l2_err")]
        fraction = f"{100 * c['fraction_of_tolerance']:.0f}%" if "fraction_of_tolerance" in c else ""
        note = c.get("error") or c.get("reason")
        status = c["status"] + (f": {_cell(note)}" if note else "")
        cells = [c["op"], c["case"], c["dtype"], status, *figures, tolerance_text(c.get("tolerance")), fraction]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def bench_table(results: dict) -> list[str]:
    parts = ((results["stages"].get("bench") or {}).get("result") or {}).get("parts") or {}
    # the search step's rows are per version (a dict), bench_mbconv's a list of shapes
    rows = [(part, row) for part in parts.values() if isinstance(part.get("rows"), list) for row in part["rows"]]
    if not rows:
        return []
    lines = ["## Benchmarks (medians of interleaved runs)", "",
             "| shape | dtype | mode | fused ms | eager ms | compile ms | vs eager | vs compile | of copy bandwidth "
             "| floor ms |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for part, row in rows:
        ms = row["ms"]
        cells = [row["shape"]["name"], part["dtype"], row["mode"], f"{ms['fused']:.3f}", f"{ms['eager']:.3f}",
                 f"{ms['compile']:.3f}" if "compile" in ms else "skipped", f"{row['speedup_vs_eager']:.2f}x",
                 f"{row['speedup_vs_compile']:.2f}x" if "speedup_vs_compile" in row else "",
                 f"{100 * row['fraction_of_copy_bandwidth']:.0f}%" if "fraction_of_copy_bandwidth" in row else "",
                 f"{row['floor_ms']:.3f}" if "floor_ms" in row else ""]
        lines.append("| " + " | ".join(cells) + " |")
    copy = copy_bandwidth(parts)
    if copy:
        lines += ["", f"Copy bandwidth (read + write) measured in the same run: {copy / 1e9:.0f} GB/s."]
    rates = [f"{part['dtype']} {part['gemm_flops_per_s'] / 1e12:.1f} TFLOP/s" for part in parts.values()
             if part.get("gemm_flops_per_s")]
    if rates:
        lines += ["", "Floor: the block's GEMMs at a large GEMM's rate (" + ", ".join(rates) + ") plus the "
                  "depthwise conv's own traffic at the copy bandwidth (bench_mbconv.py); 3x eager below it is "
                  "out of reach."]
    step = parts.get("search step") or {}
    if step.get("status") == "passed":
        versions = [f"{version}: " + ", ".join(f"{k} {x:.1f}" for k, x in row.items())
                    for version, row in step["rows"].items()]
        lines += ["", f"Search step ({step['data']}, batch {step['batch']['weight']}, {step['hardware']}): "
                  + "; ".join(versions)]
    return lines + [""]


def depthwise_table(results: dict) -> list[str]:
    part = _bench_part(results, "depthwise variants")
    if not part or part.get("status") != "passed":
        return []
    lines = ["## The CUDA depthwise kernels (the fused op, float32; FNA_EXT_CUDA_DEPTHWISE)", "",
             "| shape | mode | simple ms | tiled ms | tiled speedup | output and gradients apart (max, relative) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {row['shape']} | {row['mode']} | {row['ms']['simple']:.3f} | {row['ms']['tiled']:.3f} | "
              f"{row['tiled_speedup']:.2f}x | {row['max_relative_difference']:.1e} |" for row in part["variants"]]
    return lines + [""]


def host_overhead_table(results: dict) -> list[str]:
    part = _bench_part(results, "host overhead")
    if not part or part.get("status") != "passed":
        return []
    lines = [f"## The host's share (bench_host_overhead.py: block {part['block']}, medians of "
             f"{part['repeats']} interleaved calls)", "", "| version | us per call | ATen ops | dispatched |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {row['version']} | {row['us']:.1f} | {row['aten_ops']} | {row.get('dispatched', '')} |"
              for row in part["calls"]]
    return lines + [""]


def _profile_rows(rows: list[dict]) -> list[str]:
    return [f"| {_cell(row['name'][:100])} | {row['calls_per_iteration']:.0f} | "
            f"{row['self_device_ms_per_iteration']:.3f} | {row['self_cpu_ms_per_iteration']:.3f} |" for row in rows]


def profile_table(results: dict) -> list[str]:
    part = _bench_part(results, "profile")
    if not part or part.get("status") != "passed":
        return []
    lines = ["## Where the fused op's time goes (torch.profiler, float32, forward+backward)", ""]
    for name, prof in part["shapes"].items():
        eager = prof["eager"]
        lines += [f"{name}: per iteration, {prof['device_ms_per_iteration']:.3f} ms on the device in "
                  f"{prof['kernels_per_iteration']:.0f} kernels from {prof['aten_ops_per_iteration']:.0f} ATen ops "
                  f"(eager: {eager['device_ms_per_iteration']:.3f} ms, {eager['kernels_per_iteration']:.0f} kernels, "
                  f"{eager['aten_ops_per_iteration']:.0f} ATen ops). The fused op's top ops and kernels by "
                  f"{prof['sorted_by']}, per iteration:", "",
                  "| op or kernel | calls | self device ms | self CPU ms |", "| --- | ---: | ---: | ---: |"]
        lines += _profile_rows(prof["rows"])
        if prof.get("host_rows"):
            host = [f"{who} {p['host_ms_per_iteration']:.3f} ms" for who, p in (("fused", prof), ("eager", eager))
                    if "host_ms_per_iteration" in p]
            lines += ["", f"On the host (self CPU time under the profiler, per iteration: {', '.join(host)}), "
                      "the fused op's top ops:", "",
                      "| op or kernel | calls | self device ms | self CPU ms |", "| --- | ---: | ---: | ---: |"]
            lines += _profile_rows(prof["host_rows"])
        lines.append("")
    return lines


def write_summary(results: dict) -> None:
    logs = sorted(p.name for p in results_dir(results).iterdir() if p.suffix in (".log", ".json", ".xml"))
    text = "\n".join(header_lines(results) + main_table(results) + parity_table(results) + bench_table(results)
                     + profile_table(results) + host_overhead_table(results) + depthwise_table(results)
                     + [f"Logs and raw results in this folder: {', '.join(logs)}.", ""])
    (results_dir(results) / "summary.md").write_text(text)


def results_dir(results: dict) -> Path:
    return Path(results["out"])


# ---- the stages in order -----------------------------------------------------------------------

STAGES: dict[str, Callable[[Context, float], dict]] = {
    "build": stage_build, "info": stage_info, "pytest": stage_pytest, "parity": stage_parity,
    "memcheck": stage_memcheck, "bench": stage_bench,
}


def extension_missing(results: dict) -> bool:
    info = (results["stages"].get("info") or {}).get("info")
    return info is not None and not info.get("extension_loaded")


def run_stage(ctx: Context, name: str, deadline: float, number: int) -> dict:
    limit = deadline - time.monotonic()
    print(f"[gpu_check] {number}/{len(STAGES)} {name}: started (limit {limit:.0f} s)", flush=True)
    started = time.monotonic()
    if name in NEEDS_EXTENSION and extension_missing(ctx.results):
        record = {"status": "skipped", "detail": "skipped: the extension did not load (see the info stage)"}
    else:
        try:
            record = STAGES[name](ctx, limit)
        except Exception as err:  # a bug in one stage's checking must not lose the others
            record = {"status": "failed", "detail": f"gpu_check error: {type(err).__name__}: {err}"}
    record.update(seconds=round(time.monotonic() - started, 1), limit_s=round(limit))
    print(f"[gpu_check] {number}/{len(STAGES)} {name}: {record['status']} in {record['seconds']:.0f} s — "
          f"{record.get('detail', '')}", flush=True)
    return record


def finish(results: dict) -> None:
    add_versions(results)
    results["targets"] = evaluate_targets(results)
    results["passed"] = all(s["status"] in PASSING for s in results["stages"].values())
    write_json(results_dir(results) / "results.json", results)


def chosen_names(parser: argparse.ArgumentParser, option: str, text: str, known: list[str], noun: str) -> list[str]:
    """The comma-separated names of ``text``, each one of ``known``; otherwise one error line and
    exit 2, before any work (gpu_bench.py's --parts uses it too)."""
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        parser.exit(2, f"error: {option} {text!r}: {', '.join(unknown) or 'none given'} is not a {noun}; "
                       f"choose from {', '.join(known)}\n")
    return wanted


def check_bench_parts(parser: argparse.ArgumentParser, names: str, bench_selected: bool) -> None:
    """Refuses unknown --bench-parts before the build, not minutes later in the bench stage."""
    if not bench_selected:
        parser.exit(2, "error: --bench-parts without the bench stage: add bench to --stages\n")
    listed = subprocess.run([sys.executable, str(HERE / "gpu_bench.py"), "--list-parts"], capture_output=True,
                            text=True, cwd=REPO)
    if listed.returncode != 0:  # no torch yet, say: the bench stage will report it
        return
    chosen_names(parser, "--bench-parts", names, listed.stdout.splitlines(), "part")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, summary.md and the logs")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU with tiny shapes")
    parser.add_argument("--cuda-arch", default=CUDA_ARCH,
                        help=f"TORCH_CUDA_ARCH_LIST of the build (default {CUDA_ARCH})")
    parser.add_argument("--stages", help=f"comma-separated stages to run, of {','.join(STAGES)} (default: all)")
    parser.add_argument("--bench-parts", help="comma-separated parts of the bench stage (gpu_bench.py --parts)")
    args = parser.parse_args(argv)
    selected = list(STAGES) if args.stages is None else chosen_names(parser, "--stages", args.stages, list(STAGES),
                                                                      "stage")
    if args.bench_parts is not None:
        check_bench_parts(parser, args.bench_parts, "bench" in selected)
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=args.out.resolve(), dry_run=args.dry_run, cuda_arch=args.cuda_arch,
                  bench_parts=args.bench_parts)
    ctx.results = {"out": str(ctx.out), "dry_run": args.dry_run, "environment": environment(), "stages": {},
                   "targets": [], "passed": False}
    shares = DRY_RUN_SHARES if args.dry_run else GPU_SHARES
    deadline = time.monotonic()
    for number, name in enumerate(STAGES, 1):
        # a stage not selected passes its share on, as one that finishes early does: a rerun of
        # pytest alone gets the build's time too (the second GPU session's rerun was cut at 55 s)
        deadline += shares[name]
        if name not in selected:
            ctx.results["stages"][name] = {"status": "skipped", "detail": "not selected (--stages)"}
            continue
        ctx.results["stages"][name] = run_stage(ctx, name, deadline, number)
        finish(ctx.results)
    ctx.results["stages"]["summary"] = {"status": "passed", "detail": "this file and results.json"}
    finish(ctx.results)
    try:
        write_summary(ctx.results)
    except Exception as err:  # results.json has everything; say why the table is missing
        ctx.results["stages"]["summary"] = {"status": "failed", "detail": f"{type(err).__name__}: {err}"}
        finish(ctx.results)
    print(f"[gpu_check] {'PASSED' if ctx.results['passed'] else 'FAILED'}: {ctx.out / 'summary.md'}", flush=True)
    return 0 if ctx.results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
