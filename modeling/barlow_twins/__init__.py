"""Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230) on any backbone."""

from .configuration_barlow_twins import BarlowTwinsConfig
from .modeling_barlow_twins import BackboneForBarlowTwins, BarlowTwinsOutput

__all__ = ["BackboneForBarlowTwins", "BarlowTwinsConfig", "BarlowTwinsOutput"]
