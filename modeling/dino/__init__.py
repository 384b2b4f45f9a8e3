"""DINO (Caron et al. 2021, arXiv:2104.14294): self-distillation from an EMA teacher on any backbone."""

from .configuration_dino import DINOConfig
from .modeling_dino import BackboneForDINO, DINONetwork, DINOOutput, DINOPreTrainedModel, crops_to_batch

__all__ = ["BackboneForDINO", "DINOConfig", "DINONetwork", "DINOOutput", "DINOPreTrainedModel", "crops_to_batch"]
