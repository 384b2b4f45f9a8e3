"""SimMIM (Xie et al. 2021, arXiv:2111.09886) on transformers' ViT and Swin encoders."""

from .configuration_simmim import SimMIMConfig
from .modeling_simmim import SimMIMOutput, SwinForSimMIM, ViTForSimMIM

__all__ = ["SimMIMConfig", "SimMIMOutput", "SwinForSimMIM", "ViTForSimMIM"]
