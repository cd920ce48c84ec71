"""Builds fna_ext and its compiled extension fna_ext._C.

The extension is a CppExtension against a CPU torch and a CUDAExtension (adding the .cu sources)
against a CUDA torch or with FORCE_CUDA=1. Where torch is not importable (an isolated
`pip install .`), only the Python package is installed and the same sources, shipped inside it as
fna_ext/_csrc, are compiled on first use. fna_ext/_build_config.py holds the one list of sources
and flags both paths read.
"""

import os
import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CONFIG = runpy.run_path(str(ROOT / "fna_ext" / "_build_config.py"))


class BuildPyWithSources(build_py):
    """Ships csrc/ inside the package, so the first-use build has its sources."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "fna_ext" / "_csrc"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(ROOT / "csrc", target, ignore=shutil.ignore_patterns("tests"))


def extension_build():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("fna_ext: torch is not importable here (isolated build?), so the C++ extension is not "
              "built now; fna_ext compiles it on first use. For a build at install time, run "
              "`pip install --no-build-isolation .` with torch installed.")
        return [], {}
    with_cuda = os.environ.get("FORCE_CUDA") == "1" or (
        torch.version.cuda is not None and CUDA_HOME is not None)
    csrc = ROOT / "csrc"
    sources = [os.path.relpath(s, ROOT) for s in CONFIG["sources"](with_cuda, root=csrc)]
    flags = {"cxx": CONFIG["cxx_flags"](with_cuda)}
    if with_cuda:
        arch_list = CONFIG["ensure_cuda_arch_list"](torch.cuda.is_available())
        print(f"fna_ext: building the CUDA extension for TORCH_CUDA_ARCH_LIST={arch_list}")
        flags["nvcc"] = CONFIG["NVCC_FLAGS"] + [
            f"-D{k}={v}" for k, v in CONFIG["define_macros"](with_cuda)]
        ext = CUDAExtension(CONFIG["EXTENSION_NAME"], sources, extra_compile_args=flags,
                            extra_link_args=CONFIG["LINK_FLAGS"])
    else:
        ext = CppExtension(CONFIG["EXTENSION_NAME"], sources, extra_compile_args=flags,
                           extra_link_args=CONFIG["LINK_FLAGS"])
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extension_build()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **cmdclass})
