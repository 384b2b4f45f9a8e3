"""hf-ssl: self-supervised pre-training for vision, native to the Hugging Face ecosystem.

`import hf_ssl` registers every hf-ssl config and model with the transformers Auto classes and
every pre-training method with the method registry used by ``hf-ssl pretrain``.
"""

from hf_ssl.backbones import BackboneContractMixin, BackboneSpec, VisionBackbone, backbone_preset, resolve_backbone
from hf_ssl.modeling.barlow_twins import BackboneForBarlowTwins, BarlowTwinsConfig, BarlowTwinsOutput
from hf_ssl.modeling.beit import BEiTConfig, BEiTOutput, ViTForBEiT
from hf_ssl.modeling.byol import BackboneForBYOL, BYOLConfig, BYOLOutput
from hf_ssl.modeling.dino import BackboneForDINO, DINOConfig, DINOOutput
from hf_ssl.modeling.dinov2 import BackboneForDINOv2, DINOv2Config, DINOv2Output
from hf_ssl.modeling.distillation import BackboneForDistillation, DistillationConfig, DistillationOutput
from hf_ssl.modeling.dual_encoder import BackboneForDualEncoder, DualEncoderConfig, DualEncoderOutput
from hf_ssl.modeling.mae import MAEConfig, MAEOutput, ViTForMAE
from hf_ssl.modeling.segmentation import BackboneForSemanticSegmentation, SegmentationConfig
from hf_ssl.modeling.moco_v3 import BackboneForMoCoV3, MoCoV3Config, MoCoV3Output
from hf_ssl.modeling.simclr import BackboneForSimCLR, SimCLRConfig, SimCLROutput
from hf_ssl.modeling.simmim import SimMIMConfig, SimMIMOutput, SwinForSimMIM, ViTForSimMIM
from hf_ssl.modeling.simsiam import BackboneForSimSiam, SimSiamConfig, SimSiamOutput
from hf_ssl.modeling.splitmask import SplitMaskConfig, SplitMaskOutput, ViTForSplitMask
from hf_ssl.modeling.vicreg import BackboneForVICReg, VICRegConfig, VICRegOutput
from hf_ssl.recipes import Recipe, available_methods, get_recipe, register_auto_classes, register_recipe
from hf_ssl.visualization import save_reconstruction_figure

__version__ = "0.2.0"

__all__ = [
    "BEiTConfig",
    "BEiTOutput",
    "BYOLConfig",
    "BYOLOutput",
    "BackboneContractMixin",
    "BackboneForBYOL",
    "BackboneForBarlowTwins",
    "BackboneForDINO",
    "BackboneForDINOv2",
    "BackboneForDistillation",
    "BackboneForDualEncoder",
    "BackboneForMoCoV3",
    "BackboneForSemanticSegmentation",
    "BackboneForSimCLR",
    "BackboneForSimSiam",
    "BackboneForVICReg",
    "BackboneSpec",
    "BarlowTwinsConfig",
    "BarlowTwinsOutput",
    "DINOConfig",
    "DINOv2Config",
    "DINOv2Output",
    "DINOOutput",
    "DistillationConfig",
    "DistillationOutput",
    "DualEncoderConfig",
    "DualEncoderOutput",
    "MAEConfig",
    "MAEOutput",
    "MoCoV3Config",
    "MoCoV3Output",
    "Recipe",
    "SegmentationConfig",
    "SimCLRConfig",
    "SimCLROutput",
    "SimMIMConfig",
    "SimMIMOutput",
    "SimSiamConfig",
    "SimSiamOutput",
    "SplitMaskConfig",
    "SplitMaskOutput",
    "SwinForSimMIM",
    "VICRegConfig",
    "VICRegOutput",
    "ViTForBEiT",
    "ViTForMAE",
    "ViTForSimMIM",
    "ViTForSplitMask",
    "VisionBackbone",
    "available_methods",
    "backbone_preset",
    "get_recipe",
    "register_auto_classes",
    "register_recipe",
    "resolve_backbone",
    "save_reconstruction_figure",
]
