"""SplitMask and BEiT-style masked image modeling on ViT."""

from .configuration_splitmask import BEiTConfig, LegacySplitMaskConfig, SplitMaskConfig
from .modeling_splitmask import SplitMaskOutput, SplitMaskPreTrainedModel, ViTForBEiT, ViTForSplitMask

__all__ = ["BEiTConfig", "LegacySplitMaskConfig", "SplitMaskConfig", "SplitMaskOutput", "SplitMaskPreTrainedModel", "ViTForBEiT", "ViTForSplitMask"]
