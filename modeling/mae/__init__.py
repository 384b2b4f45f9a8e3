"""MAE (He et al. 2021, arXiv:2111.06377) as a thin layer over transformers' ViTMAEForPreTraining."""

from .configuration_mae import MAEConfig
from .modeling_mae import MAEOutput, ViTForMAE, vit_mae_encoder_to_vit_state_dict

__all__ = ["MAEConfig", "MAEOutput", "ViTForMAE", "vit_mae_encoder_to_vit_state_dict"]
