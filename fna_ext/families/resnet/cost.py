"""The ResNet family's per-op cost, under :mod:`fna_ext.cost`'s convention (bias-free convs)."""

from __future__ import annotations

from .blocks import inner_width
from .op import Op


def _output_size(size: int, stride: int) -> int:
    # an odd K x K conv padded by dilation * (K // 2), and the 1x1 shortcut, give the same size
    return (size - 1) // stride + 1


def block_madds(c_in: int, c_out: int, op: Op, stride: int, input_size: tuple[int, int]) -> int:
    """A block's MAdds (0 for ``skip``). Dilation changes no count: the taps and the output size
    stay the same; G groups divide the K x K convs' by G."""
    if op.is_skip:
        return 0
    h, w = input_size
    out = _output_size(h, stride) * _output_size(w, stride)
    k2 = op.kernel * op.kernel
    width = inner_width(op.block, c_out, op.width)
    if op.block == "basic":
        convs = (k2 * c_in * width * out + k2 * width * c_out * out) // op.groups
    else:
        convs = c_in * width * h * w + k2 * width * width * out // op.groups + width * c_out * out
    shortcut = c_in * c_out * out if stride != 1 or c_in != c_out else 0
    return convs + shortcut
