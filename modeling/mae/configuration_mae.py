"""Configuration of MAE pre-training: transformers' `ViTMAEConfig` under an hf-ssl model type.

MAE: He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377.
transformers ships the model (`ViTMAEForPreTraining`); hf-ssl only changes the defaults to the
paper's recipe (mask ratio 0.75, normalised-pixel target, LayerNorm eps 1e-6) and validates.
"""

from __future__ import annotations

from transformers import ViTConfig, ViTMAEConfig

from hf_ssl.config_checks import require, require_positive_ints
from hf_ssl.vit_encoders import vit_encoder_config


class MAEConfig(ViTMAEConfig):
    r"""Configuration of [`ViTForMAE`]: every field of `ViTMAEConfig`, paper defaults.

    Args:
        mask_ratio (`float`, defaults to 0.75): fraction of patches the encoder never sees.
        norm_pix_loss (`bool`, defaults to `True`): regress per-patch normalised pixels (paper, Table 1d).
        layer_norm_eps (`float`, defaults to 1e-6): as in the MAE / timm ViT.
        image_size, patch_size, num_channels, hidden_size, num_hidden_layers, num_attention_heads,
        intermediate_size, decoder_hidden_size (512), decoder_num_hidden_layers (8),
        decoder_num_attention_heads (16), decoder_intermediate_size (2048), ...: see `ViTMAEConfig`.
    """

    model_type = "hf-ssl-mae"

    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    layer_norm_eps: float = 1e-6

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        require_positive_ints(self, ("image_size", "patch_size", "num_channels", "hidden_size", "num_attention_heads",
                                     "decoder_hidden_size", "decoder_num_attention_heads"))
        # 0 is allowed: it runs the encoder on every patch (feature extraction, the export test).
        require(self, 0.0 <= self.mask_ratio < 1.0, f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        require(self, self.image_size % self.patch_size == 0,
                f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        require(self, self.hidden_size % self.num_attention_heads == 0,
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        require(self, self.decoder_hidden_size % self.decoder_num_attention_heads == 0,
                f"decoder_hidden_size ({self.decoder_hidden_size}) must be divisible by decoder_num_attention_heads "
                f"({self.decoder_num_attention_heads})")

    def encoder_config(self) -> ViTConfig:
        """The plain `ViTConfig` of the encoder: what `export_backbone` writes."""
        config = vit_encoder_config(self)
        config._attn_implementation = self._attn_implementation
        return config


__all__ = ["MAEConfig"]
