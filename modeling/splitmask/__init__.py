"""SplitMask and BEiT-style masked image modeling on ViT."""

from .configuration_splitmask import BEiTConfig, SplitMaskConfig
from .modeling_splitmask import SplitMaskForPreTrainingOutput, SplitMaskPreTrainedModel, ViTForBEiT, ViTForSplitMask

__all__ = ["BEiTConfig", "SplitMaskConfig", "SplitMaskForPreTrainingOutput", "SplitMaskPreTrainedModel", "ViTForBEiT", "ViTForSplitMask"]
