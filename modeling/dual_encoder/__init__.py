"""CLIP-style image-text dual encoder (CLIP / SigLIP losses, LiT locking) on any vision backbone."""

from .configuration_dual_encoder import DualEncoderConfig
from .modeling_dual_encoder import BackboneForDualEncoder, DualEncoderOutput

__all__ = ["BackboneForDualEncoder", "DualEncoderConfig", "DualEncoderOutput"]
