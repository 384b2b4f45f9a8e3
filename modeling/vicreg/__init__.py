"""VICReg (Bardes et al. 2021, arXiv:2105.04906) on any backbone."""

from .configuration_vicreg import VICRegConfig
from .modeling_vicreg import BackboneForVICReg, VICRegOutput

__all__ = ["BackboneForVICReg", "VICRegConfig", "VICRegOutput"]
