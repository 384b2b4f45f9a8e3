"""DINOv2 (Oquab et al. 2023, arXiv:2304.07193): DINO's CLS self-distillation plus iBOT's masked-patch
term and the KoLeo regulariser, from scratch or continued from DINOv2 weights."""

from .configuration_dinov2 import DINOv2Config
from .modeling_dinov2 import BackboneForDINOv2, DINOv2Network, DINOv2Output, DINOv2PreTrainedModel

__all__ = ["BackboneForDINOv2", "DINOv2Config", "DINOv2Network", "DINOv2Output", "DINOv2PreTrainedModel"]
