"""Distillation of a frozen teacher (any transformers / timm encoder or hf-ssl run) into any student."""

from .configuration_distillation import DistillationConfig
from .modeling_distillation import BackboneForDistillation, DistillationOutput

__all__ = ["BackboneForDistillation", "DistillationConfig", "DistillationOutput"]
