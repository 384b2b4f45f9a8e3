"""hf-ssl: self-supervised pre-training for vision, native to the Hugging Face ecosystem.

`import hf_ssl` registers every hf-ssl config and model with the transformers Auto classes and
every pre-training method with the method registry used by `trainers/pretrain.py`.
"""

from hf_ssl.backbones import backbone_preset
from hf_ssl.modeling.mae import MAEConfig, MAEForPreTraining
from hf_ssl.modeling.simmim import SimMIMConfig, SimMIMOutput, SwinForSimMIM, ViTForSimMIM
from hf_ssl.modeling.splitmask import (
    BEiTConfig,
    SplitMaskConfig,
    SplitMaskForPreTrainingOutput,
    ViTForBEiT,
    ViTForSplitMask,
)
from hf_ssl.recipes import available_methods, get_recipe
from hf_ssl.registry import register_auto_classes
from hf_ssl.visualization import save_reconstruction_figure

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "BEiTConfig",
    "MAEConfig",
    "MAEForPreTraining",
    "SimMIMConfig",
    "SimMIMOutput",
    "SwinForSimMIM",
    "ViTForSimMIM",
    "save_reconstruction_figure",
    "SplitMaskConfig",
    "SplitMaskForPreTrainingOutput",
    "ViTForBEiT",
    "ViTForSplitMask",
    "available_methods",
    "backbone_preset",
    "get_recipe",
    "register_auto_classes",
]
