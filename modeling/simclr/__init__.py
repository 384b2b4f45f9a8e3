"""SimCLR (Chen et al. 2020, arXiv:2002.05709) on any backbone."""

from .configuration_simclr import SimCLRConfig
from .modeling_simclr import BackboneForSimCLR, SimCLROutput

__all__ = ["BackboneForSimCLR", "SimCLRConfig", "SimCLROutput"]
