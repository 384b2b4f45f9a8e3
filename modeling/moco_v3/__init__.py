"""MoCo v3 (Chen, Xie, He 2021, arXiv:2104.02057) on any backbone."""

from .configuration_moco_v3 import MOCO_V3_RESNET_FIELDS, MoCoV3Config
from .modeling_moco_v3 import BackboneForMoCoV3, MoCoV3Output

__all__ = ["MOCO_V3_RESNET_FIELDS", "BackboneForMoCoV3", "MoCoV3Config", "MoCoV3Output"]
