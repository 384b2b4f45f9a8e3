"""Configuration of SplitMask on a ViT encoder.

SplitMask: El-Nouby et al. 2021, "Are Large-scale Datasets Necessary for Self-Supervised
Pre-training?", arXiv:2112.10740.
"""

from __future__ import annotations

from transformers import ViTConfig

from hf_ssl.config_checks import require
from hf_ssl.token_prediction import PatchTokenConfig

# Fields of configs saved while BEiT was SplitMask's ``objective="beit"``, which SplitMask never read.
BEIT_ONLY_FIELDS = ("objective", "mask_ratio", "mask_strategy")


class SplitMaskConfig(PatchTokenConfig):
    r"""Configuration of [`ViTForSplitMask`]: a ViT encoder (exported as a plain `ViTModel` or
    `BeitModel`), a shallow ViT decoder, a patch-tokenizer vocabulary and the SplitMask objective.

    The loss is ``mim_loss_weight * (MIM(A) + MIM(B)) + contrastive_loss_weight * InfoNCE`` (the SplitMask paper:
    "MIM(A) + MIM(B) + InfoNCE"); each row of the paper's ablation (split / inpaint / match) is
    one setting of `use_mim_loss` and `use_contrastive_loss` (see `recipe.py`).
    Configs saved before these fields existed (no ``mim_loss_weight`` key) load with the loss they
    were trained with: the two MIM terms averaged, and the projection head on.

    Args:
        image_size ... use_relative_position_bias, tokenizer_vocab_size ... tokenizer_fingerprint,
        mim_loss_weight: the encoder, tokenizer and loss-weight fields of `PatchTokenConfig`
            (``use_relative_position_bias`` is refused: SplitMask encodes a subset of the patches).
        decoder_hidden_size (`int`, defaults to 256): width of the shallow decoder.
        decoder_num_hidden_layers (`int`, defaults to 2): decoder depth (at least 1: only the
            decoder sees the hidden positions).
        decoder_num_attention_heads (`int`, defaults to 8), decoder_intermediate_size (`int`,
            defaults to 1024): decoder blocks.
        use_mim_loss (`bool`, defaults to `True`): predict the hidden patches' tokens ("inpaint").
        use_contrastive_loss (`bool`, defaults to `True`): add InfoNCE between the two branches ("match").
        contrastive_temperature (`float`, defaults to 0.2): InfoNCE temperature tau (the SplitMask paper
            gives none; 0.2 is hf-ssl's).
        contrastive_loss_weight (`float`, defaults to 1.0): weight of InfoNCE in the total loss.
        use_projection_head (`bool`, defaults to `False`): pass each global descriptor through a
            2-layer MLP before InfoNCE; the paper matches the averaged decoder outputs directly.
        projection_dim (`int`, defaults to 256): output size of that MLP.
        gather_negatives_across_processes (`bool`, defaults to `True`): negatives from the global
            batch when running distributed.
    """

    model_type = "hf-ssl-splitmask"

    decoder_hidden_size: int = 256
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 8
    decoder_intermediate_size: int = 1024
    use_mim_loss: bool = True
    use_contrastive_loss: bool = True
    contrastive_temperature: float = 0.2
    contrastive_loss_weight: float = 1.0
    use_projection_head: bool = False
    projection_dim: int = 256
    gather_negatives_across_processes: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Load a saved config; one saved before the loss weights existed keeps its training loss."""
        if config_dict.get("objective", "splitmask") != "splitmask":
            raise ValueError(
                f"This config has objective={config_dict['objective']!r}: BEiT is its own method, load the "
                "checkpoint with model_type 'hf-ssl-beit' (BEiTConfig, ViTForBEiT)"
            )
        config_dict = {key: value for key, value in config_dict.items() if key not in BEIT_ONLY_FIELDS}
        if "mim_loss_weight" not in config_dict:
            # hf-ssl <= 0.2 averaged the two MIM terms and always projected the descriptors.
            config_dict = {**config_dict, "mim_loss_weight": 0.5, "use_projection_head": True}
        return super().from_dict(config_dict, **kwargs)

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        objective = getattr(self, "objective", "splitmask")  # a field while BEiT was an objective of SplitMask
        require(self, objective == "splitmask", f"objective must be 'splitmask', got {objective!r} (BEiT is its own "
                "method: BEiTConfig / ViTForBEiT, --method beit)")
        self.check_shared_fields()
        require(self, isinstance(self.projection_dim, int) and self.projection_dim > 0,
                f"projection_dim must be a positive int, got {self.projection_dim!r}")
        require(self, self.contrastive_temperature > 0,
                f"contrastive_temperature must be > 0, got {self.contrastive_temperature}")
        require(self, self.contrastive_loss_weight >= 0, f"contrastive_loss_weight must be >= 0, got {self.contrastive_loss_weight}")
        require(self, isinstance(self.decoder_num_hidden_layers, int) and self.decoder_num_hidden_layers >= 1,
                f"SplitMask needs decoder_num_hidden_layers >= 1 (got {self.decoder_num_hidden_layers!r}): the encoder "
                "never sees the hidden positions, only the decoder can place mask tokens there")
        require(self, self.decoder_hidden_size % self.decoder_num_attention_heads == 0,
                f"decoder_hidden_size ({self.decoder_hidden_size}) must be divisible by "
                f"decoder_num_attention_heads ({self.decoder_num_attention_heads})")
        require(self, self.num_patches >= 2, f"SplitMask needs at least 2 patches, got {self.num_patches}")
        require(self, self.use_mim_loss or self.use_contrastive_loss, "SplitMask needs use_mim_loss or use_contrastive_loss (or both)")
        require(self, not self.use_relative_position_bias,
                "SplitMask encodes only the visible half of the patches: use "
                "use_shared_relative_position_bias=True (BEiT's pre-training setting), not a per-block table")

    def decoder_config(self) -> ViTConfig:
        """A `ViTConfig` describing one decoder block (transformers' `ViTLayer` is reused)."""
        return ViTConfig(
            hidden_size=self.decoder_hidden_size,
            num_hidden_layers=self.decoder_num_hidden_layers,
            num_attention_heads=self.decoder_num_attention_heads,
            intermediate_size=self.decoder_intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            layer_norm_eps=self.layer_norm_eps,
            qkv_bias=self.qkv_bias,
            initializer_range=self.initializer_range,
        )


class LegacySplitMaskConfig(SplitMaskConfig):
    """Reads checkpoints that hf-ssl 0.1 saved under ``model_type="splitmask"`` (every hf-ssl type
    has had the ``hf-ssl-`` prefix since 0.2): `AutoConfig` finds this class by the old type and it
    returns a current `SplitMaskConfig`, so the Auto model classes and a later save see the new type."""

    model_type = "splitmask"

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        return SplitMaskConfig.from_dict({**config_dict, "model_type": SplitMaskConfig.model_type}, **kwargs)


__all__ = ["LegacySplitMaskConfig", "SplitMaskConfig"]
