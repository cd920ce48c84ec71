"""The fused ops' Autograd kernels, registered as ``torch.library.register_autograd`` registers
them (a Python kernel at the Autograd key, an ``autograd.Function`` that redispatches below it),
with one difference: the schema's defaults are filled from a list read once, at registration.

``register_autograd``'s generated kernel calls ``torch._library.utils.fill_defaults`` on every
forward, which reads ``schema.arguments`` (a new list of every argument) once per argument: about
100 us a call for the fused ops' 20-odd arguments on this project's CPUs, more than the whole
fused forward of a small block (the host time is what a GPU step at search sizes waits on;
benchmarks/RESULTS.md). The setup and backward functions are the same ones
``register_autograd`` takes: ``setup_context(ctx, inputs, output)`` and ``backward(ctx, *grads)``
returning one gradient per op input.
"""

from __future__ import annotations

from typing import Callable

import torch

_LIBRARIES: dict[str, torch.library.Library] = {}  # kept alive: a dropped Library unregisters its kernels


def _library(namespace: str) -> torch.library.Library:
    if namespace not in _LIBRARIES:
        _LIBRARIES[namespace] = torch.library.Library(namespace, "IMPL")
    return _LIBRARIES[namespace]


def register_autograd(qualname: str, backward: Callable, setup_context: Callable) -> None:
    """``torch.library.register_autograd(qualname, backward, setup_context=setup_context)`` for an
    op whose arguments are all positional."""
    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name).default
    arguments = op._schema.arguments
    if any(a.kwarg_only for a in arguments):
        raise ValueError(f"{qualname}: keyword-only arguments are not supported here")
    defaults = tuple(a.default_value if a.has_default_value() else None for a in arguments)
    below_autograd = torch._C._after_autograd_keyset

    def complete(args: tuple) -> tuple:
        # the dispatcher drops trailing arguments equal to their defaults; the op's setup and
        # backward see every argument, as register_autograd's do
        return args + defaults[len(args):] if len(args) < len(defaults) else args

    def forward(ctx, *args_and_keyset):
        *args, keyset = args_and_keyset
        with torch._C._AutoDispatchBelowAutograd():
            output = op.redispatch(keyset & below_autograd, *args)
        setup_context(ctx, tuple(args), output)
        return output

    def backward_with_keyset(ctx, *grads):
        needs = ctx.needs_input_grad
        ctx.needs_input_grad = needs[:-1]  # without the keyset's entry
        try:
            result = backward(ctx, *grads)
        finally:
            ctx.needs_input_grad = needs
        return (*result, None) if isinstance(result, tuple) else (result, None)

    # register_autograd's class name, so the graph's nodes read as before (grad_fn names)
    Function = type(f"GeneratedBackwardFor_{namespace}_{name}_default", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward_with_keyset)})

    def kernel(keyset, *args):
        args = complete(args)
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return Function.apply(*args, keyset)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & below_autograd, *args)

    _library(namespace).impl(name, kernel, "Autograd", with_keyset=True)
