"""fna_ext's operators. Each runs its compiled kernel where the extension has one for the input's
device, and its pure-PyTorch reference otherwise (the reference is also what the tests compare
the kernels with)."""

from .nms import batched_nms, batched_nms_reference, nms, nms_reference
from .sampled_mbconv import centre_kernel, sampled_mbconv

__all__ = ["nms", "batched_nms", "nms_reference", "batched_nms_reference", "sampled_mbconv", "centre_kernel"]
