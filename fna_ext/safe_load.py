"""Reading a torch file someone hands us, safely: ``torch.load(..., weights_only=True)`` only,
which never runs code. Every failure becomes one ValueError that says what the file is and what
to do; it never suggests the unsafe ``weights_only=False`` that torch's own message offers."""

from __future__ import annotations

import re
from pathlib import Path

import torch

# re-saving only the tensors is the safe conversion of a pickled-object file
RESAVE_HINT = ("if you trust where it came from, re-save only its tensors there, "
               "torch.save(model.state_dict(), 'weights.pt'), or as .safetensors")


def load_plain(path: str | Path, what: str = "file", map_location="cpu"):
    """The contents of ``path`` (tensors, numbers, strings and containers of them)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give the file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # the unpickler raises many types on a file that is not plain data
        raise ValueError(f"{what} {path} cannot be loaded: {why_not_loaded(err)}") from None


def why_not_loaded(err: BaseException) -> str:
    """What a failed ``weights_only`` load says about the file, in one line."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"[Uu]nsupported global:? ([\w.]+)", text)
    if found:
        return (f"it holds pickled Python objects ({found.group(1)}), which fna_ext never unpickles "
                f"because loading them can run code; {RESAVE_HINT}")
    if isinstance(err, EOFError) or "Ran out of input" in text:
        return "it is empty or truncated"
    if "PytorchStreamReader" in text or "zip archive" in text or "central directory" in text:
        return "it is truncated or damaged, or not a file torch.save wrote"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    # torch's own text around here suggests the unsafe load; it is not repeated
    detail = f" ({type(err).__name__}: {first})" if first and "weights_only" not in text else ""
    return f"it is damaged or not a file torch.save wrote{detail}"
