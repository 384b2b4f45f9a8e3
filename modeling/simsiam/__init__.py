"""SimSiam (Chen & He 2020, arXiv:2011.10566) on any backbone."""

from .configuration_simsiam import SimSiamConfig
from .modeling_simsiam import BackboneForSimSiam, SimSiamOutput

__all__ = ["BackboneForSimSiam", "SimSiamConfig", "SimSiamOutput"]
