"""Parameter remapping (FNA Sec. 3.2, Algorithm 1): see :mod:`.core`."""

from .core import (  # noqa: F401
    first_channels, select_channels, depth_map, kernel_index, gather, kernel, width_index, TensorRemap,
    LayerRecord, RemapPlan, add_conv, add_bias, add_bn, check_compatible, plan_network, remap_network, plan_candidates,
    WIDTH_MODES, KERNEL_MODES, GROUP_MODES, FILL,
)
from .io import (  # noqa: F401
    save_weights, load_seed_network, declared_seed_arch,
)
