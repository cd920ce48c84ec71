import pytest
import torch

from fna_ext import _extension


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available() and _extension.has_kernel("nms", "cuda")
    skip = pytest.mark.skip(reason="needs a CUDA device and an extension built with CUDA")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip)
