"""Configuration of SimMIM masked image modeling on a ViT or Swin encoder.

SimMIM: Xie et al. 2021, "SimMIM: a Simple Framework for Masked Image Modeling", arXiv:2111.09886.
The encoder is transformers' own `ViTModel` / `SwinModel`; this config holds its fields (flat, HF
names) plus every objective setting that changes `forward`: mask ratio, mask patch size and mask
strategy. Optimizer settings live in the training recipe (`modeling/simmim/recipe.py`).
"""

from __future__ import annotations

from transformers import BeitConfig, PreTrainedConfig, SwinConfig, ViTConfig

from hf_ssl.config_checks import require, require_positive_ints
from hf_ssl.vit_encoders import (
    BEIT_ENCODER_DEFAULTS,
    ENCODER_TYPES,
    beit_encoder_config,
    check_beit_fields,
    vit_encoder_config,
)

BACKBONES = ("vit", "swin")
MASK_STRATEGIES = ("random", "square", "blockwise")
ARCHITECTURE_BY_BACKBONE = {"vit": "ViTForSimMIM", "swin": "SwinForSimMIM"}


class SimMIMConfig(PreTrainedConfig):
    r"""Configuration of [`SwinForSimMIM`] (``backbone="swin"``) and [`ViTForSimMIM`] (``backbone="vit"``).

    Args:
        backbone (`"vit"` or `"swin"`, defaults to `"swin"`): encoder family; picks the model class.
        image_size (`int`, defaults to 192): input resolution (square). SimMIM pre-trains Swin at 192.
        patch_size (`int`, *optional*): the encoder's patch size; defaults to 4 for Swin and 16 for ViT.
        num_channels (`int`, defaults to 3): input channels.
        hidden_size (`int`, *optional*): ViT width (default 384, ViT-S). For Swin it is derived
            (``embed_dim * 2 ** (len(depths) - 1)``, the width of the last stage) and must not
            disagree when given.
        num_hidden_layers, num_attention_heads, intermediate_size (`int`): the ViT encoder
            (defaults: ViT-S, 12 / 6 / 1536); ignored for Swin.
        embed_dim (`int`, defaults to 96), depths (`list[int]`, defaults to `[2, 2, 6, 2]`),
        num_heads (`list[int]`, defaults to `[3, 6, 12, 24]`), mlp_ratio (`float`, defaults to 4.0),
        drop_path_rate (`float`, defaults to 0.0): stochastic depth. Swin: SimMIM pre-trains Swin
            without it (configs/swin_*/simmim_pretrain_*.yaml); ViT: 0.1 in the published ViT-B
            recipe, which needs ``encoder_type="beit"``.
        encoder_type (`"vit"` or `"beit"`, defaults to `"vit"`): for ``backbone="vit"``, transformers'
            `ViTModel` or its `BeitModel`, the ViT of SimMIM's ViT-B recipe (drop path, layer scale,
            shared relative position bias, no absolute positions: configs/vit_base__800ep/
            simmim_pretrain__vit_base__img224__800ep.yaml, `MODEL.VIT` in config.py).
        layer_scale_init_value (`float`, defaults to 0.0): initial layer scale, 0 disables it
            (SimMIM ViT-B: 0.1, `MODEL.VIT.INIT_VALUES`); ``encoder_type="beit"`` only.
        use_absolute_position_embeddings (`bool`, defaults to `True`): learned absolute positions
            of the ViT (SimMIM ViT-B: off, `USE_APE: False`).
        use_shared_relative_position_bias (`bool`, defaults to `False`): one relative position bias
            shared by all blocks (SimMIM ViT-B: on, `USE_SHARED_RPB: True`).
        use_relative_position_bias (`bool`, defaults to `False`): one table per block (`USE_RPB`).
        window_size (`int`, defaults to 6): Swin window size (SimMIM: 6 at 192 px). Every stage's
            resolution must be a multiple of it or no larger than it (Swin then uses one window).
        hidden_act (`str`), hidden_dropout_prob, attention_probs_dropout_prob (`float`), qkv_bias
            (`bool`): shared encoder fields, HF defaults.
        layer_norm_eps (`float`, *optional*): defaults to 1e-6 for ViT (timm / SimMIM) and 1e-5 for Swin.
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init.
        mask_ratio (`float`, defaults to 0.6): fraction of mask patches hidden per image.
        mask_patch_size (`int`, defaults to 32): side of a masking unit in pixels; independent of
            the encoder's patch size, but must be a multiple of it and divide `image_size`.
        mask_strategy (`"random"`, `"square"` or `"blockwise"`, defaults to `"random"`): how the
            hidden mask patches are chosen (see `hf_ssl.masking.simmim`).
    """

    model_type = "hf-ssl-simmim"

    backbone: str = "swin"
    image_size: int = 192
    patch_size: int | None = None
    num_channels: int = 3
    hidden_size: int | None = None
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    intermediate_size: int = 1536
    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 6
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    encoder_type: str = "vit"
    layer_scale_init_value: float = 0.0
    use_absolute_position_embeddings: bool = True
    use_relative_position_bias: bool = False
    use_shared_relative_position_bias: bool = False
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    qkv_bias: bool = True
    layer_norm_eps: float | None = None
    initializer_range: float = 0.02
    mask_ratio: float = 0.6
    mask_patch_size: int = 32
    mask_strategy: str = "random"

    def __post_init__(self, **kwargs):
        if self.backbone in BACKBONES:
            self._fill_family_defaults()
            if getattr(self, "architectures", None) is None and "architectures" not in kwargs:
                # The Auto classes map this one config type to two model classes; they choose by
                # `architectures`, so a fresh config must already name the class of its backbone.
                kwargs["architectures"] = [ARCHITECTURE_BY_BACKBONE[self.backbone]]
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        super().__post_init__(**kwargs)
        self.check_fields()

    def _fill_family_defaults(self) -> None:
        if self.patch_size is None:
            self.patch_size = 4 if self.backbone == "swin" else 16
        if self.layer_norm_eps is None:
            self.layer_norm_eps = 1e-5 if self.backbone == "swin" else 1e-6
        if self.backbone == "swin":
            last_stage_width = int(self.embed_dim * 2 ** (len(self.depths) - 1))
            if self.hidden_size is not None and self.hidden_size != last_stage_width:
                raise ValueError(
                    f"SimMIMConfig: hidden_size ({self.hidden_size}) must equal embed_dim * 2 ** (len(depths) - 1) "
                    f"= {last_stage_width} for backbone='swin' (leave it unset)"
                )
            self.hidden_size = last_stage_width
        elif self.hidden_size is None:
            self.hidden_size = 384

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        require(self, self.backbone in BACKBONES, f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        require(self, self.mask_strategy in MASK_STRATEGIES,
                f"mask_strategy must be one of {MASK_STRATEGIES}, got {self.mask_strategy!r}")
        require_positive_ints(self, ("image_size", "patch_size", "num_channels", "hidden_size", "mask_patch_size"))
        require(self, 0.0 < self.mask_ratio < 1.0, f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        require(self, self.image_size % self.patch_size == 0,
                f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        require(self, self.mask_patch_size % self.patch_size == 0,
                f"mask_patch_size ({self.mask_patch_size}) must be a multiple of the model's patch_size "
                f"({self.patch_size})")
        require(self, self.image_size % self.mask_patch_size == 0,
                f"image_size ({self.image_size}) must be divisible by mask_patch_size ({self.mask_patch_size})")
        require(self, self.encoder_type in ENCODER_TYPES, f"encoder_type must be one of {ENCODER_TYPES}, got {self.encoder_type!r}")
        if self.backbone == "vit":
            require(self, self.hidden_size % self.num_attention_heads == 0,
                    f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads})")
            check_beit_fields(self)
        else:
            beit_only = {name: value for name, value in BEIT_ENCODER_DEFAULTS.items() if name != "drop_path_rate"}
            require(self, self.encoder_type == "vit" and all(getattr(self, name) == value for name, value in beit_only.items()),
                    f"encoder_type and {', '.join(beit_only)} apply to backbone='vit' only (Swin has its own "
                    "relative position bias)")
            self._check_swin_geometry(require)

    def _check_swin_geometry(self, require) -> None:
        require(self, len(self.depths) == len(self.num_heads) and len(self.depths) > 0,
                f"depths ({self.depths}) and num_heads ({self.num_heads}) must be non-empty lists of equal length")
        require(self, isinstance(self.window_size, int) and self.window_size > 0,
                f"window_size must be a positive int, got {self.window_size!r}")
        resolution = self.image_size // self.patch_size
        stride = self.encoder_stride
        require(self, self.image_size % stride == 0,
                f"image_size ({self.image_size}) must be divisible by patch_size * 2 ** (len(depths) - 1) = {stride} "
                f"(each Swin stage halves the resolution)")
        for stage, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            stage_resolution = resolution // 2**stage
            width = self.embed_dim * 2**stage
            require(self, width % heads == 0, f"stage {stage} width {width} must be divisible by num_heads[{stage}] ({heads})")
            # A non-dividing window pads the map and the masked positions drift; a map smaller than
            # the window fails in transformers 5's Swin (the shrunk window's mask no longer fits).
            require(self, stage_resolution % self.window_size == 0,
                    f"window_size ({self.window_size}) is incompatible with the Swin resolution: stage {stage} is "
                    f"{stage_resolution}x{stage_resolution} patches (image_size {self.image_size} / patch_size "
                    f"{self.patch_size} / 2**{stage}); use a window that divides every stage resolution "
                    f"{[resolution // 2**s for s in range(len(self.depths))]}")

    @property
    def encoder_stride(self) -> int:
        """Pixels per output token of the encoder: the prediction head upsamples by this factor."""
        if self.backbone == "swin":
            return self.patch_size * 2 ** (len(self.depths) - 1)
        return self.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """Encoder patch grid ``(rows, cols)``: the shape of ``bool_masked_pos`` before flattening."""
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def encoder_config(self) -> ViTConfig | BeitConfig | SwinConfig:
        """The plain `ViTConfig` / `BeitConfig` / `SwinConfig` of the encoder: what `export_backbone` writes."""
        if self.backbone == "vit" and self.encoder_type == "beit":
            return beit_encoder_config(self)
        if self.backbone == "vit":
            config = vit_encoder_config(self, encoder_stride=self.encoder_stride)
        else:
            config = SwinConfig(
                image_size=self.image_size,
                patch_size=self.patch_size,
                num_channels=self.num_channels,
                hidden_act=self.hidden_act,
                hidden_dropout_prob=self.hidden_dropout_prob,
                attention_probs_dropout_prob=self.attention_probs_dropout_prob,
                qkv_bias=self.qkv_bias,
                layer_norm_eps=self.layer_norm_eps,
                initializer_range=self.initializer_range,
                encoder_stride=self.encoder_stride,
                embed_dim=self.embed_dim,
                depths=list(self.depths),
                num_heads=list(self.num_heads),
                window_size=self.window_size,
                mlp_ratio=self.mlp_ratio,
                drop_path_rate=self.drop_path_rate,
            )
        config._attn_implementation = self._attn_implementation
        return config


__all__ = ["SimMIMConfig"]
