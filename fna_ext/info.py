"""``python -m fna_ext.info``: versions, and whether the compiled extension loaded (and for which
devices) or every op runs its pure-PyTorch reference path."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess

import torch

from . import __version__, _extension, cli


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
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else "nvcc"
    return {
        "fna_ext_version": __version__,
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "nvcc_version": _nvcc_release(nvcc),
        "compiler": status.build_info.get("compiler") or _compiler_on_path(),
        "extension_loaded": status.loaded,
        "extension_how": status.how,
        "extension_devices": status.devices,
        "extension_built_against_torch": status.build_info.get("torch_version"),
        "extension_built_with_cuda": status.build_info.get("cuda"),
        "extension_error": status.error,
    }


def format_info(info: dict) -> str:
    lines = [
        f"fna_ext     {info['fna_ext_version']}",
        f"torch       {info['torch_version']} (CUDA {info['torch_cuda_version'] or 'none'}, "
        f"GPU available: {'yes' if info['cuda_available'] else 'no'})",
        f"nvcc        {info['nvcc_version'] or 'not found'}",
        f"compiler    {info['compiler'] or 'not found'}",
    ]
    if info["extension_loaded"]:
        lines += [
            f"extension   loaded ({info['extension_how']}); compiled kernels for: "
            f"{', '.join(info['extension_devices']) or 'no device'}",
            f"            built against torch {info['extension_built_against_torch']}, "
            f"{'with' if info['extension_built_with_cuda'] else 'without'} CUDA",
        ]
    else:
        lines.append(f"extension   not loaded ({info['extension_how']}): every op runs its "
                     "pure-PyTorch reference path; nothing is fused")
        if info["extension_error"]:
            lines.append(f"            {info['extension_error'].splitlines()[0]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fna_ext.info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-compile", action="store_true",
                        help="report only; do not compile a missing extension")
    args = parser.parse_args(argv)
    info = collect(compile_if_missing=not args.no_compile)
    print(json.dumps(info) if args.json else format_info(info))
    return 0


if __name__ == "__main__":
    cli.run(main)
