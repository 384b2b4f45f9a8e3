"""BYOL (Grill et al. 2020, arXiv:2006.07733) on any backbone."""

from .configuration_byol import BYOLConfig
from .modeling_byol import BackboneForBYOL, BYOLOutput

__all__ = ["BYOLConfig", "BYOLOutput", "BackboneForBYOL"]
