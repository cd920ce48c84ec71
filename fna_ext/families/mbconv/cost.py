"""The MBConv family's per-op cost."""

from __future__ import annotations


def _conv_output_size(size: int, kernel: int, stride: int) -> int:
    # nn.Conv2d with padding kernel // 2
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def mbconv_madds(c_in: int, c_out: int, kernel: int, expansion: int, stride: int, input_size: tuple[int, int],
                 dilation: int = 1) -> int:
    """An MBConv's MAdds under :mod:`fna_ext.cost`'s convention (bias-free convs only). A dilated
    depthwise conv has the same taps and, padded by ``dilation * (kernel // 2)``, the same output
    size: dilation changes no count."""
    hidden = c_in * expansion
    h, w = input_size
    h_out, w_out = (_conv_output_size(s, kernel, stride) for s in input_size)
    expand = c_in * hidden * h * w if expansion != 1 else 0
    depthwise = kernel * kernel * hidden * h_out * w_out
    project = hidden * c_out * h_out * w_out
    return expand + depthwise + project
