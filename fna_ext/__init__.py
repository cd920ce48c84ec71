"""fna_ext: Fast Neural Network Adaptation (FNA, FNA++) for PyTorch.

Adapts a pretrained seed network's architecture and parameters to a dense task (detection,
segmentation, pose) through parameter remapping and differentiable architecture search.
"""

import sys

from ._version import __version__
from . import _extension


def _started_as_a_command() -> bool:
    """``python -m fna_ext.X``: the package is imported before the command's module runs, and so
    before :func:`fna_ext.cli.run` installs the one-line warning format. A command's process is
    fna_ext's own, so the format is installed now, for the warnings of the import below. While
    ``-m`` locates its module, ``sys.argv[0]`` is ``"-m"``; the module's name is in
    ``sys.orig_argv`` (``-m NAME`` or ``-mNAME``)."""
    if sys.argv[:1] != ["-m"]:
        return False
    argv = list(getattr(sys, "orig_argv", ()))
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("-m"):
            name = arg[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            return name.startswith("fna_ext.")
    return False


if _started_as_a_command():
    from .cli import one_line_warnings

    one_line_warnings()

# Load an installed extension now (cheap), so a torch mismatch warns at import; a missing one is
# compiled only when an op first needs it.
_extension.status(compile_if_missing=False)

from .arch import Arch, Op, Stage  # noqa: E402
from .cost import CostReport, count  # noqa: E402
from .families.mbconv import build_network, load_seed_weights, mobilenet_v2  # noqa: E402
from . import ops, remap  # noqa: E402
from .remap import remap_network  # noqa: E402
from .tasks import build_model  # noqa: E402

__all__ = ["__version__", "Arch", "Op", "Stage", "count", "CostReport", "build_network",
           "mobilenet_v2", "load_seed_weights", "ops", "remap", "remap_network", "build_model"]
