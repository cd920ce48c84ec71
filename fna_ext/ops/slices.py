"""The one definition of a candidate's slice of a shared max-size MBConv weight (Once-for-All's
"one slice rule per layer"): candidate (k, e) uses the first ``e`` hidden channels and the centre
k x k taps. The fused ops' wrappers, the super network's optimiser masks and the remapping's
``center`` kernel rule all read it from here; the C++ kernels' geometry implements the same rule
and is tested against the wrappers."""

from __future__ import annotations


def centre_offset(max_kernel: int, kernel: int) -> int:
    """Where a ``kernel``-tap window starts inside ``max_kernel`` taps, centred; negative when the
    window is the larger one (the remapping pads a smaller seed kernel with zeros around it)."""
    if max_kernel % 2 == 0 or kernel % 2 == 0:
        raise ValueError(f"kernel sizes must be odd, got {max_kernel} and {kernel}")
    return (max_kernel - kernel) // 2


def kernel_window(max_kernel: int, kernel: int) -> slice:
    """The taps (along one spatial axis) a ``kernel`` candidate uses of a ``max_kernel`` weight."""
    if kernel > max_kernel or kernel % 2 == 0 or max_kernel % 2 == 0:
        raise ValueError(f"kernel_size {kernel} does not fit centred in a {max_kernel}x{max_kernel} weight "
                         "(both odd, the candidate's no larger)")
    start = centre_offset(max_kernel, kernel)
    return slice(start, start + kernel)


def hidden_window(expand_channels: int) -> slice:
    """The hidden channels a candidate of ``expand_channels`` inner channels uses: the first ones."""
    return slice(0, expand_channels)


def mbconv_regions(max_kernel: int, kernel: int, expand_channels: int) -> dict[str, tuple[slice, ...]]:
    """The region of each shared tensor candidate (kernel, expand_channels) uses: the expand conv
    (E, C, 1, 1), the depthwise conv (E, 1, K, K), the project conv (C_out, E, 1, 1) and the
    hidden BNs (E,)."""
    hidden, taps = hidden_window(expand_channels), kernel_window(max_kernel, kernel)
    return {"expand": (hidden,), "depthwise": (hidden, slice(None), taps, taps), "project": (slice(None), hidden),
            "hidden_bn": (hidden,)}
