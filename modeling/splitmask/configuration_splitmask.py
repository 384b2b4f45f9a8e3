"""Configuration of SplitMask and BEiT-style masked image modeling on a ViT encoder.

SplitMask: El-Nouby et al. 2021, "Are Large-scale Datasets Necessary for Self-Supervised
Pre-training?", arXiv:2112.10740. BEiT: Bao et al. 2021, arXiv:2106.08254.
"""

from __future__ import annotations

from transformers import PreTrainedConfig, ViTConfig

OBJECTIVES = ("splitmask", "beit")
MASK_STRATEGIES = ("blockwise", "random")
TOKENIZER_METHODS = ("kmeans", "random_patches", "uniform")


class SplitMaskConfig(PreTrainedConfig):
    r"""Configuration of [`ViTForSplitMask`]: a ViT encoder (weights load into `ViTModel`), a shallow
    ViT decoder, a patch-tokenizer vocabulary and the SplitMask / BEiT objective.

    Args:
        image_size (`int`, defaults to 224): input resolution (square).
        patch_size (`int`, defaults to 16): ViT patch size; must divide `image_size`.
        num_channels (`int`, defaults to 3): input channels.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        hidden_dropout_prob, attention_probs_dropout_prob, layer_norm_eps, qkv_bias:
            the encoder, as in `ViTConfig` (defaults: ViT-S/16).
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init.
        decoder_hidden_size (`int`, defaults to 256): width of the shallow decoder.
        decoder_num_hidden_layers (`int`, defaults to 2): decoder depth; 0 puts the token
            classifier directly on the encoder (BEiT's own design, `objective="beit"` only).
        decoder_num_attention_heads (`int`, defaults to 8), decoder_intermediate_size (`int`,
            defaults to 1024): decoder blocks.
        objective (`"splitmask"` or `"beit"`, defaults to `"splitmask"`): `"splitmask"` splits the
            patches into two disjoint halves, encodes each half's visible patches only and adds
            InfoNCE between the two halves; `"beit"` hides one random subset and lets the encoder
            see every position, with a mask token at the hidden ones.
        mask_ratio (`float`, defaults to 0.4): fraction of hidden patches (`"beit"` only; SplitMask
            always hides half).
        mask_strategy (`"blockwise"` or `"random"`, defaults to `"blockwise"`): BEiT's mask shape.
        tokenizer_vocab_size (`int`, defaults to 8192): vocabulary size V of the patch tokenizer.
        tokenizer_resolution (`int`, defaults to 8): patches are downsampled to r x r x C vectors.
        tokenizer_method (`"kmeans"`, `"random_patches"` or `"uniform"`): how the vocabulary is built.
        tokenizer_fingerprint (`str`, *optional*): content hash of the fitted vocabulary, set by
            `fit_tokenizer`; `None` means "not fitted" and the model refuses to compute targets.
        use_contrastive_loss (`bool`, defaults to `True`): add InfoNCE between the two branches.
        contrastive_temperature (`float`, defaults to 0.2): InfoNCE temperature tau.
        contrastive_loss_weight (`float`, defaults to 1.0): weight of InfoNCE in the total loss.
        projection_dim (`int`, defaults to 256): size of the projected global descriptor.
        gather_negatives_across_processes (`bool`, defaults to `True`): negatives from the global
            batch when running distributed.
    """

    model_type = "hf-ssl-splitmask"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    initializer_range: float = 0.02
    decoder_hidden_size: int = 256
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 8
    decoder_intermediate_size: int = 1024
    objective: str = "splitmask"
    mask_ratio: float = 0.4
    mask_strategy: str = "blockwise"
    tokenizer_vocab_size: int = 8192
    tokenizer_resolution: int = 8
    tokenizer_method: str = "kmeans"
    tokenizer_fingerprint: str | None = None
    use_contrastive_loss: bool = True
    contrastive_temperature: float = 0.2
    contrastive_loss_weight: float = 1.0
    projection_dim: int = 256
    gather_negatives_across_processes: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""

        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"SplitMaskConfig: {message}")

        for name in ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "tokenizer_vocab_size", "tokenizer_resolution", "projection_dim"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, f"{name} must be a positive int, got {value!r}")
        require(self.image_size % self.patch_size == 0,
                f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        require(self.hidden_size % self.num_attention_heads == 0,
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        require(self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        require(self.mask_strategy in MASK_STRATEGIES,
                f"mask_strategy must be one of {MASK_STRATEGIES}, got {self.mask_strategy!r}")
        require(self.tokenizer_method in TOKENIZER_METHODS,
                f"tokenizer_method must be one of {TOKENIZER_METHODS}, got {self.tokenizer_method!r}")
        require(0.0 < self.mask_ratio < 1.0, f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        require(self.contrastive_temperature > 0,
                f"contrastive_temperature must be > 0, got {self.contrastive_temperature}")
        require(isinstance(self.decoder_num_hidden_layers, int) and self.decoder_num_hidden_layers >= 0,
                f"decoder_num_hidden_layers must be an int >= 0, got {self.decoder_num_hidden_layers!r}")
        if self.decoder_num_hidden_layers > 0:
            require(self.decoder_hidden_size % self.decoder_num_attention_heads == 0,
                    f"decoder_hidden_size ({self.decoder_hidden_size}) must be divisible by "
                    f"decoder_num_attention_heads ({self.decoder_num_attention_heads})")
        if self.objective == "splitmask":
            require(self.decoder_num_hidden_layers >= 1,
                    "objective='splitmask' needs decoder_num_hidden_layers >= 1: the encoder never sees "
                    "the hidden positions, only the decoder can place mask tokens there")
            require(self.num_patches >= 2, f"SplitMask needs at least 2 patches, got {self.num_patches}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    def encoder_config(self) -> ViTConfig:
        """The plain `ViTConfig` of the encoder: what `export_backbone` writes."""
        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            layer_norm_eps=self.layer_norm_eps,
            qkv_bias=self.qkv_bias,
            initializer_range=self.initializer_range,
            encoder_stride=self.patch_size,
        )

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


class BEiTConfig(SplitMaskConfig):
    r"""BEiT pre-training with the patch-tokenizer targets: [`SplitMaskConfig`] with
    `objective="beit"`, no contrastive term, block-wise masks hiding 40% of the patches and the
    token classifier directly on the encoder (`decoder_num_hidden_layers=0`). Every field of
    [`SplitMaskConfig`] can still be overridden.
    """

    model_type = "hf-ssl-beit"

    objective: str = "beit"
    use_contrastive_loss: bool = False
    decoder_num_hidden_layers: int = 0
    mask_ratio: float = 0.4
    mask_strategy: str = "blockwise"


class LegacySplitMaskConfig(SplitMaskConfig):
    """Reads checkpoints that hf-ssl 0.1 saved under ``model_type="splitmask"`` (every hf-ssl type
    has had the ``hf-ssl-`` prefix since 0.2): `AutoConfig` finds this class by the old type and it
    returns a current `SplitMaskConfig`, so the Auto model classes and a later save see the new type."""

    model_type = "splitmask"

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        return SplitMaskConfig.from_dict({**config_dict, "model_type": SplitMaskConfig.model_type}, **kwargs)


__all__ = ["BEiTConfig", "LegacySplitMaskConfig", "SplitMaskConfig"]
