"""BEiT (Bao et al. 2021, arXiv:2106.08254) with patch-tokenizer targets on a ViT."""

from .configuration_beit import BEiTConfig
from .modeling_beit import BEiTOutput, BEiTPreTrainedModel, ViTForBEiT

__all__ = ["BEiTConfig", "BEiTOutput", "BEiTPreTrainedModel", "ViTForBEiT"]
