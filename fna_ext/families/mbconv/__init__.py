"""Networks built from architectures as data, and loading of pretrained seed weights."""

from .blocks import ConvBNAct, MBConv, Skip, make_layer
from .network import Network, build_network, mobilenet_v2
from .seed_weights import LoadReport, load_seed_weights, read_state_dict

__all__ = ["ConvBNAct", "MBConv", "Skip", "make_layer", "Network", "build_network", "mobilenet_v2",
           "load_seed_weights", "read_state_dict", "LoadReport"]
