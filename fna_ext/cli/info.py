"""``python -m fna_ext.info``: versions, and whether the compiled extension loaded (and for which
devices) or every op runs its pure-PyTorch reference path."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import torch

from .. import __version__, _build_config, _extension, cli


def _command_output(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return ""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _compiler_on_path() -> str | None:
    """First line of ``c++ --version``: the compiler a first-use build would run."""
    lines = _command_output(["c++", "--version"]).splitlines()
    return lines[0] if lines else None


def _nvcc_release(nvcc: str) -> str | None:
    """'13.0, V13.0.88' from nvcc's 'Cuda compilation tools, release 13.0, V13.0.88' line."""
    match = re.search(r"release (\S+ V\S+|\S+)", _command_output([nvcc, "--version"]))
    return match.group(1) if match else None


def collect(compile_if_missing: bool = True) -> dict:
    status = _extension.status(compile_if_missing=compile_if_missing)
    cuda_home, _ = _build_config.find_cuda_home()
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else "nvcc"
    return {
        "fna_ext_version": __version__,
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_home": cuda_home,
        "nvcc_version": _nvcc_release(nvcc),
        "compiler": status.build_info.get("compiler") or _compiler_on_path(),
        "extension_loaded": status.loaded,
        "extension_how": status.how,
        "extension_devices": status.devices,
        "extension_kernels": status.kernels,
        "extension_missing_kernels": status.missing_kernels(),
        "extension_built_against_torch": status.build_info.get("torch_version"),
        "extension_built_with_cuda": status.build_info.get("cuda"),
        "extension_cxx_standard": status.build_info.get("cxx_standard"),
        "extension_cpu_isa": _cpu_isa() if status.loaded else None,
        "host_cache_limit_mib": _host_cache_mib("host_cache_limit") if status.loaded else None,
        "host_cache_held_mib": _host_cache_mib("host_cache_bytes") if status.loaded else None,
        "extension_error": status.error,
    }


def _host_cache_mib(op: str) -> float | None:
    try:
        return getattr(torch.ops.fna_ext, op)() / 2 ** 20
    except (AttributeError, RuntimeError):
        return None


def _cpu_isa() -> str | None:
    """The copy of the CPU kernels in use (avx512, avx2, baseline or native), where the build has
    the op (an older one may not)."""
    try:
        return torch.ops.fna_ext.cpu_isa()
    except (AttributeError, RuntimeError):
        return None


def format_info(info: dict) -> str:
    lines = [
        f"fna_ext     {info['fna_ext_version']}",
        f"torch       {info['torch_version']} (CUDA {info['torch_cuda_version'] or 'none'}, "
        f"GPU available: {'yes' if info['cuda_available'] else 'no'})",
        f"nvcc        {info['nvcc_version'] or 'not found'}"
        + (f" (CUDA_HOME {info['cuda_home']})" if info["cuda_home"] else ""),
        f"compiler    {info['compiler'] or 'not found'}",
    ]
    if info["extension_loaded"]:
        lines += [
            f"extension   loaded ({info['extension_how']}); compiled kernels for: "
            f"{', '.join(info['extension_devices']) or 'no device'}",
            f"            built against torch {info['extension_built_against_torch']}, "
            f"{'with' if info['extension_built_with_cuda'] else 'without'} CUDA, "
            f"C++ {str(info['extension_cxx_standard'])[2:4] if info['extension_cxx_standard'] else '?'}",
        ]
        if info["extension_cpu_isa"]:
            lines.append(f"            CPU kernels run as {info['extension_cpu_isa']} (FNA_EXT_CPU_ISA chooses a "
                         "lower copy)")
        if info["host_cache_limit_mib"] is not None:
            lines.append(f"            host block cache: keeps at most {info['host_cache_limit_mib']:.0f} MiB "
                         f"(FNA_EXT_HOST_CACHE_MB), holds {info['host_cache_held_mib']:.0f} MiB")
        for device, missing in info["extension_missing_kernels"].items():
            if missing:
                lines.append(f"            {device} lacks kernels for: {', '.join(missing)}")
    else:
        lines.append(f"extension   not loaded ({info['extension_how']}): every op runs its "
                     "pure-PyTorch reference path; nothing is fused")
        if info["extension_error"]:
            lines.append(f"            cause: {info['extension_error'].splitlines()[0]}")
    return "\n".join(lines)


def install_problems(info: dict) -> list[str]:
    """What falls short of an extension built at install time with every kernel: for the CPU, and
    for CUDA when torch has CUDA and a toolkit is found."""
    problems = []
    if info["extension_how"] != "installed":
        problems.append(f"the extension is {info['extension_how']!r}, not installed"
                        + (f" ({info['extension_error']})" if info["extension_error"] else ""))
    wanted = ["cpu"] + (["cuda"] if info["torch_cuda_version"] and info["cuda_home"] else [])
    problems += [f"no {device} kernels" for device in wanted
                 if device not in info["extension_devices"]]
    problems += [f"{device} lacks kernels for {', '.join(missing)}"
                 for device, missing in info["extension_missing_kernels"].items() if missing]
    return problems


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m fna_ext.info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-compile", action="store_true",
                        help="report only; do not compile a missing extension")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless the extension built at install time loaded, with "
                             "every op's kernel for the CPU and, with a CUDA torch and toolkit, CUDA")
    args = parser.parse_args(argv)
    info = collect(compile_if_missing=not (args.no_compile or args.check))
    print(json.dumps(info) if args.json else format_info(info))
    problems = install_problems(info) if args.check else []
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
