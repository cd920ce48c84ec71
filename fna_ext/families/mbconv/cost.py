"""The MBConv family's per-op cost."""

from __future__ import annotations

from .op import Op


def _conv_output_size(size: int, kernel: int, stride: int) -> int:
    # nn.Conv2d with padding kernel // 2
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def mbconv_madds(c_in: int, c_out: int, op: Op, stride: int, input_size: tuple[int, int], dilation: int = 1) -> int:
    """An MBConv's MAdds under :mod:`fna_ext.cost`'s convention (convs, plus one per output where
    a conv has a bias: the SE's two 1x1 convs on the pooled 1x1 map). A dilated depthwise conv has
    the same taps and, padded by ``dilation * (kernel // 2)``, the same output size: dilation
    changes no count."""
    hidden = op.hidden_channels(c_in)
    h, w = input_size
    h_out, w_out = (_conv_output_size(s, op.kernel, stride) for s in input_size)
    expand = c_in * hidden * h * w if op.has_expand else 0
    depthwise = op.kernel * op.kernel * hidden * h_out * w_out
    squeezed = op.se_channels(c_in)
    se = (hidden * squeezed + squeezed) + (squeezed * hidden + hidden) if squeezed else 0
    project = hidden * c_out * h_out * w_out
    return expand + depthwise + se + project
