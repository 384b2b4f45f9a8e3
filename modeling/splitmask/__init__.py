"""SplitMask (El-Nouby et al. 2021, arXiv:2112.10740) masked image modeling on ViT."""

from .configuration_splitmask import LegacySplitMaskConfig, SplitMaskConfig
from .modeling_splitmask import SplitMaskOutput, SplitMaskPreTrainedModel, ViTForSplitMask

__all__ = ["LegacySplitMaskConfig", "SplitMaskConfig", "SplitMaskOutput", "SplitMaskPreTrainedModel", "ViTForSplitMask"]
