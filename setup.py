"""Builds fna_ext and its compiled extension fna_ext._C.

The extension is a CppExtension against a CPU torch and a CUDAExtension (adding the .cu sources)
against a CUDA torch when a CUDA toolkit is found, or with FORCE_CUDA=1. Where torch is not
importable (an isolated `pip install .`), only the Python package is installed and the same
sources, shipped inside it as fna_ext/_csrc, are compiled on first use. fna_ext/_build_config.py
holds the one list of sources and flags both paths read; the C++ standard is left to torch's
BuildExtension, which adds the one its headers need.
"""

import os
import runpy
import shutil
import sys
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


def fail(message: str):
    """One line pip shows in its error block, instead of a compiler's or setuptools' traceback."""
    print(f"error: fna_ext: {message}", file=sys.stderr)
    sys.exit(1)


def build_ext_class(base):
    class BuildExtInCheckout(base):
        """Also places the built _C in the source checkout's fna_ext/ (what `build_ext --inplace`
        does), so `python -m fna_ext...` run from the clone, which imports the checkout's package
        rather than the installed one, finds the extension built at install time."""

        def run(self):
            super().run()
            if not self.inplace and not getattr(self, "editable_mode", False):
                self.copy_extensions_to_source()

    return BuildExtInCheckout


def extension_build():
    try:
        import torch
    except ImportError:
        print("fna_ext: torch is not importable here (isolated build?), so the C++ extension is not "
              "built now; fna_ext compiles it on first use. For a build at install time, run "
              "`pip install --no-build-isolation .` with torch installed.")
        return [], {}
    problem = CONFIG["compiler_problem"]()
    if problem:
        fail(problem)
    try:  # before cpp_extension is imported: it reads CUDA_HOME once
        with_cuda, note = CONFIG["cuda_build_decision"](torch.version.cuda is not None)
    except RuntimeError as err:
        fail(str(err))
    if note:
        print(f"fna_ext: {note}")
    if CONFIG["find_ninja"]() is None:
        print(f"fna_ext: {CONFIG['NINJA_PROBLEM']} for a parallel build; building one file at a "
              "time instead")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    csrc = ROOT / "csrc"
    try:
        sources = [os.path.relpath(s, ROOT) for s in CONFIG["sources"](with_cuda, root=csrc)]
    except ValueError as err:  # FNA_EXT_OPS names an unknown family
        fail(str(err))
    flags = {"cxx": CONFIG["cxx_flags"](with_cuda)}
    if with_cuda:
        arch_list = CONFIG["ensure_cuda_arch_list"](torch.cuda.is_available())
        print(f"fna_ext: building the CUDA extension with CUDA_HOME={os.environ['CUDA_HOME']} "
              f"for TORCH_CUDA_ARCH_LIST={arch_list}")
        flags["nvcc"] = CONFIG["NVCC_FLAGS"] + [
            f"-D{k}={v}" for k, v in CONFIG["define_macros"](with_cuda)]
        ext = CUDAExtension(CONFIG["EXTENSION_NAME"], sources, extra_compile_args=flags,
                            extra_link_args=CONFIG["LINK_FLAGS"])
    else:
        ext = CppExtension(CONFIG["EXTENSION_NAME"], sources, extra_compile_args=flags,
                           extra_link_args=CONFIG["LINK_FLAGS"])
    return [ext], {"build_ext": build_ext_class(BuildExtension)}


ext_modules, cmdclass = extension_build()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **cmdclass})
