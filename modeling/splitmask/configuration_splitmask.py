"""Configuration of SplitMask and BEiT-style masked image modeling on a ViT encoder.

SplitMask: El-Nouby et al. 2021, "Are Large-scale Datasets Necessary for Self-Supervised
Pre-training?", arXiv:2112.10740. BEiT: Bao et al. 2021, arXiv:2106.08254.
"""

from __future__ import annotations

from transformers import BeitConfig, PreTrainedConfig, ViTConfig

from hf_ssl.masking import beit_num_masked_patches
from hf_ssl.vit_encoders import ENCODER_TYPES, beit_encoder_config, check_beit_fields, vit_encoder_config

OBJECTIVES = ("splitmask", "beit")
MASK_STRATEGIES = ("blockwise", "random")
TOKENIZER_METHODS = ("kmeans", "random_patches", "uniform")


class SplitMaskConfig(PreTrainedConfig):
    r"""Configuration of [`ViTForSplitMask`]: a ViT encoder (exported as a plain `ViTModel` or
    `BeitModel`), a shallow ViT decoder, a patch-tokenizer vocabulary and the SplitMask / BEiT objective.

    The loss is ``mim_loss_weight * (MIM(A) + MIM(B)) + contrastive_loss_weight * InfoNCE`` (the SplitMask paper:
    "MIM(A) + MIM(B) + InfoNCE"); each row of the paper's ablation (split / inpaint / match) is
    one setting of `use_mim_loss` and `use_contrastive_loss` (see `recipe.py`).
    Configs saved before these fields existed (no ``mim_loss_weight`` key) load with the loss they
    were trained with: the two MIM terms averaged, and the projection head on.

    Args:
        image_size (`int`, defaults to 224): input resolution (square).
        patch_size (`int`, defaults to 16): ViT patch size; must divide `image_size`.
        num_channels (`int`, defaults to 3): input channels.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        hidden_dropout_prob, attention_probs_dropout_prob, layer_norm_eps, qkv_bias:
            the encoder, as in `ViTConfig` (defaults: ViT-S/16).
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init.
        encoder_type (`"vit"` or `"beit"`, defaults to `"vit"`): transformers' `ViTModel`, or its
            `BeitModel` (the ViT of the BEiT paper: the fields below).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth of the last block, linear from 0
            over depth (BEiT: 0.1); `"beit"` only.
        layer_scale_init_value (`float`, defaults to 0.0): initial layer-scale value, 0 disables it
            (BEiT: 0.1 for base, 1e-5 for large); `"beit"` only.
        use_absolute_position_embeddings (`bool`, defaults to `True`): learned absolute positions
            (BEiT pre-training: off, it uses the shared relative position bias instead).
        use_shared_relative_position_bias (`bool`, defaults to `False`): one relative position bias
            table shared by all blocks (BEiT pre-training); `"beit"` only.
        use_relative_position_bias (`bool`, defaults to `False`): one table per block (BEiT
            fine-tuning); `"beit"` with `objective="beit"` only (SplitMask encodes a subset of the
            patches, for which only the shared table can be gathered).
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
        use_mim_loss (`bool`, defaults to `True`): predict the hidden patches' tokens ("inpaint").
        mim_loss_weight (`float`, defaults to 1.0): weight of each branch's MIM cross-entropy (of
            the single one for BEiT).
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
    encoder_type: str = "vit"
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 0.0
    use_absolute_position_embeddings: bool = True
    use_relative_position_bias: bool = False
    use_shared_relative_position_bias: bool = False
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
    use_mim_loss: bool = True
    mim_loss_weight: float = 1.0
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
        if "mim_loss_weight" not in config_dict and config_dict.get("objective", cls.objective) == "splitmask":
            # hf-ssl <= 0.2 averaged the two MIM terms and always projected the descriptors.
            config_dict = {**config_dict, "mim_loss_weight": 0.5, "use_projection_head": True}
        return super().from_dict(config_dict, **kwargs)

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
        require(self.encoder_type in ENCODER_TYPES, f"encoder_type must be one of {ENCODER_TYPES}, got {self.encoder_type!r}")
        check_beit_fields(require, self)
        for name in ("mim_loss_weight", "contrastive_loss_weight"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
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
            require(self.use_mim_loss or self.use_contrastive_loss,
                    "objective='splitmask' needs use_mim_loss or use_contrastive_loss (or both)")
            require(not self.use_relative_position_bias,
                    "objective='splitmask' encodes only the visible half of the patches: use "
                    "use_shared_relative_position_bias=True (BEiT's pre-training setting), not a per-block table")
        else:
            require(self.use_mim_loss, "objective='beit' has no other loss than MIM: use_mim_loss must be True")

    @property
    def num_masked_patches(self) -> int:
        """Patches a BEiT mask hides: 75 of 196 at ratio 0.4 on a 14x14 grid (the official
        ``--num_mask_patches 75``), scaled to other grids and ratios (`hf_ssl.masking.beit_num_masked_patches`)."""
        return beit_num_masked_patches(self.grid_size, self.mask_ratio)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    def encoder_config(self) -> ViTConfig | BeitConfig:
        """The `ViTConfig` / `BeitConfig` of the encoder: what `export_backbone` writes."""
        if self.encoder_type == "beit":
            return beit_encoder_config(self)
        return vit_encoder_config(self)

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
    `objective="beit"`, no contrastive term, block-wise masks and the token classifier directly on
    the encoder (`decoder_num_hidden_layers=0`). Every field of [`SplitMaskConfig`] can still be
    overridden.

    The mask size is the paper's nominal ratio, `mask_ratio=0.4`, not the official count: the
    official recipe hides ``--num_mask_patches 75`` of the 196 patches of a 224-px image (0.383),
    and `num_masked_patches` turns the ratio into that count (75 at 0.4 on 14x14, scaled to other
    grids and ratios), so one field works at every resolution and the recipe's count stays exact.
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
