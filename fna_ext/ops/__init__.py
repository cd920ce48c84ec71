"""fna_ext's operators. Each runs its compiled kernel where the extension has one for the input's
device, and its pure-PyTorch reference otherwise (the reference is also what the tests compare
the kernels with)."""

from .mbconv_mixture import (depthwise_project_mixture, depthwise_project_mixture_reference, mbconv_mixture,
                             mbconv_mixture_reference, takes_fused_mixture)
from .nms import batched_nms, batched_nms_reference, nms, nms_reference
from .photometric import photometric_distortion, photometric_distortion_reference
from .sampled_mbconv import (FUSED_BY_DEFAULT, centre_kernel, depthwise_project, depthwise_project_reference, fused,
                             fused_enabled, fused_setting, sampled_mbconv, sampled_mbconv_reference, set_fused,
                             takes_fused_path)

__all__ = ["nms", "batched_nms", "nms_reference", "batched_nms_reference", "photometric_distortion",
           "photometric_distortion_reference", "sampled_mbconv", "sampled_mbconv_reference",
           "depthwise_project", "depthwise_project_reference", "centre_kernel", "fused", "set_fused",
           "fused_enabled", "fused_setting", "FUSED_BY_DEFAULT", "takes_fused_path", "mbconv_mixture",
           "mbconv_mixture_reference", "depthwise_project_mixture", "depthwise_project_mixture_reference",
           "takes_fused_mixture"]
