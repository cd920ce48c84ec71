import os

import pytest
import torch

from fna_ext import _extension


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available() and _extension.has_kernel("nms", "cuda")
    skip = pytest.mark.skip(reason="needs a CUDA device and an extension built with CUDA")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip)


def pytest_configure(config):
    # Under pytest-xdist each of the two workers gets one core's worth of threads, so they do not
    # fight over the cores (subprocesses a test starts choose their own).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
