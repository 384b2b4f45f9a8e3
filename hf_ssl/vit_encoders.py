"""The two ViT encoders of the masked-image-modeling methods: transformers' `ViTModel` and `BeitModel`.

`ViTModel` is the plain ViT (learned absolute positions, no stochastic depth, no layer scale).
The published BEiT, SplitMask and SimMIM-ViT recipes train a different ViT: stochastic depth
(drop path), layer scale and a relative position bias shared by all blocks, without absolute
positions (BEiT: Bao et al. 2021, arXiv:2106.08254, microsoft/unilm beit/modeling_pretrain.py;
SimMIM: Xie et al. 2021, arXiv:2111.09886, microsoft/SimMIM models/vision_transformer.py). That
ViT is transformers' own `BeitModel`, so a config with ``encoder_type="beit"`` builds one and
exports it as a plain `BeitModel` checkpoint that `AutoModel`, `AutoModelForImageClassification`
and ``pipeline("image-feature-extraction")`` load without hf-ssl.

A `BeitModel` is built without a mask token and the masked-image-modeling model keeps its mask
token next to it (`BeitConfig` stores ``use_mask_token``, so an exported copy could not drop it);
a `ViTModel` keeps its own, which `export_backbone` drops.
`embed_patches` and `encode_tokens` run either encoder on all patches or on a subset of them
(SplitMask's visible half): the shared relative position bias is gathered at the kept
positions, so every kept token sees the same biases as in the full sequence.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import BeitConfig, BeitModel, ViTConfig, ViTModel

from hf_ssl.config_checks import require

ENCODER_TYPES = ("vit", "beit")

# BEiT-only fields a masked-image-modeling config carries flat (BeitConfig names), with the
# values that make a BeitModel compute what a ViTModel computes (the ViT encoder's defaults).
BEIT_ENCODER_DEFAULTS = dict(
    drop_path_rate=0.0,
    layer_scale_init_value=0.0,
    use_absolute_position_embeddings=True,
    use_relative_position_bias=False,
    use_shared_relative_position_bias=False,
)


# The ViT fields `ViTConfig` and `BeitConfig` share (a method config holds them flat, HF names).
VIT_ENCODER_FIELDS = (
    "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps",
    "initializer_range",
)


def vit_encoder_config(config, encoder_stride: int | None = None) -> ViTConfig:
    """The plain `ViTConfig` of a pre-training encoder, from a method config holding the ViT fields
    flat (and `qkv_bias`); `encoder_stride` defaults to the patch size."""
    fields = {name: getattr(config, name) for name in VIT_ENCODER_FIELDS}
    return ViTConfig(qkv_bias=config.qkv_bias, encoder_stride=encoder_stride or config.patch_size, **fields)


def beit_encoder_config(config) -> BeitConfig:
    """The `BeitConfig` of a pre-training encoder, from a method config holding the ViT and BEiT fields flat.

    The encoder has no mask token (the method keeps it) and keeps its final LayerNorm on every
    token (``use_mean_pooling=False``, BEiT's pre-training layout; the pooler then reads the CLS
    token). `qkv_bias` is not a BEiT field: BEiT's attention has query and value biases and no key
    bias, which changes nothing since softmax ignores a per-query constant.
    """
    fields = {name: getattr(config, name) for name in (*VIT_ENCODER_FIELDS, *BEIT_ENCODER_DEFAULTS)}
    beit_config = BeitConfig(use_mask_token=False, use_mean_pooling=False, **fields)
    beit_config._attn_implementation = config._attn_implementation
    return beit_config


def check_beit_fields(config) -> None:
    """Raise a ValueError naming the first unusable BEiT encoder field of `config`."""
    drop_path_rate = config.drop_path_rate
    require(config, isinstance(drop_path_rate, (int, float)) and 0.0 <= drop_path_rate < 1.0,
            f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    require(config, config.layer_scale_init_value >= 0.0,
            f"layer_scale_init_value must be >= 0 (0 disables layer scale), got {config.layer_scale_init_value}")
    if config.encoder_type == "vit":
        uses_beit_features = any(getattr(config, name) != value for name, value in BEIT_ENCODER_DEFAULTS.items())
        require(config, not uses_beit_features,
                "drop_path_rate, layer_scale_init_value, relative position biases and "
                "use_absolute_position_embeddings=False need encoder_type='beit' (transformers' ViTModel has none of them)")
    else:
        require(config, config.use_absolute_position_embeddings or config.use_relative_position_bias
                or config.use_shared_relative_position_bias,
                "encoder_type='beit' needs absolute position embeddings or a relative position bias")


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, image_size: int) -> None:
    """Raise a TypeError / ValueError unless `pixel_values` is a float ``(B, num_channels, image_size, image_size)``."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be a floating-point tensor (normalised images), got {pixel_values.dtype}; "
            "use the image processor or divide uint8 images by 255 and normalise"
        )
    if pixel_values.dim() != 4:
        raise ValueError(f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}")
    _, channels, height, width = pixel_values.shape
    if channels != num_channels:
        raise ValueError(f"pixel_values has {channels} channels but the model expects num_channels={num_channels}")
    if (height, width) != (image_size, image_size):
        raise ValueError(
            f"pixel_values is {height}x{width} but the model expects {image_size}x{image_size} "
            "(config.image_size); resize the images or build the model for this size"
        )


def build_encoder(encoder_type: str, config, use_mask_token: bool = False) -> ViTModel | BeitModel:
    """A freshly built encoder: ``ViTModel(config, add_pooling_layer=False)`` or ``BeitModel(config)``.

    Args:
        use_mask_token: give a `ViTModel` its own mask token (``embeddings.mask_token``, which
            `export_backbone` drops); a `BeitModel` never has one (the method keeps it).
    """
    if encoder_type == "vit":
        return ViTModel(config, add_pooling_layer=False, use_mask_token=use_mask_token)
    if encoder_type == "beit":
        return BeitModel(config)  # the CLS pooler has no parameters
    raise ValueError(f"encoder_type must be one of {ENCODER_TYPES}, got {encoder_type!r}")


def embed_patches(
    encoder: ViTModel | BeitModel,
    pixel_values: torch.Tensor,
    bool_masked_pos: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, N, D)`` patch embeddings, `mask_token` at the hidden patches, then
    absolute positions when the encoder has them (BEiT's and SimMIM's order: a hidden patch keeps
    its position).

    Args:
        bool_masked_pos: ``(B, N)`` bool, True = replaced by `mask_token` ``(1, 1, D)``.
    """
    embeddings = encoder.embeddings
    dtype = embeddings.patch_embeddings.projection.weight.dtype
    patches = embeddings.patch_embeddings(pixel_values.to(dtype))  # (B, N, D)
    if bool_masked_pos is not None:
        weight = bool_masked_pos.unsqueeze(-1).to(patches.dtype)  # (B, N, 1)
        patches = patches * (1 - weight) + mask_token.to(patches.dtype) * weight
    if embeddings.position_embeddings is not None:
        patches = patches + embeddings.position_embeddings[:, 1:]
    return patches


def shared_relative_position_bias(encoder: BeitModel, grid_size: tuple[int, int], positions: torch.Tensor | None) -> torch.Tensor:
    """The shared relative position bias for the CLS token and the kept patches.

    Args:
        grid_size: ``(rows, cols)`` of the patch grid.
        positions: ``(B, K)`` kept patch indices, or None for every patch.

    Returns:
        ``(1, heads, 1 + N, 1 + N)`` or, with `positions`, ``(B, heads, 1 + K, 1 + K)``.
    """
    bias = encoder.shared_position_bias(grid_size)  # (1, heads, 1 + N, 1 + N)
    if positions is None:
        return bias
    index = torch.cat([positions.new_zeros(positions.shape[0], 1), positions + 1], dim=1)  # (B, 1 + K), CLS first
    gathered = bias[0][:, index.unsqueeze(-1), index.unsqueeze(1)]  # (heads, B, 1 + K, 1 + K)
    return gathered.transpose(0, 1)


def encode_tokens(
    encoder: ViTModel | BeitModel,
    patch_tokens: torch.Tensor,
    grid_size: tuple[int, int],
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prepend CLS, run the blocks and the final LayerNorm.

    Args:
        encoder: a `ViTModel` or a `BeitModel` built by `build_encoder`.
        patch_tokens: ``(B, K, D)`` from `embed_patches` (possibly masked or subset).
        grid_size: ``(rows, cols)`` of the full patch grid.
        positions: ``(B, K)`` grid index of each token when they are a subset of the grid (None:
            all N patches in order).

    Returns:
        ``(B, 1 + K, D)`` encoder outputs, CLS first.

    Raises:
        ValueError: a subset of positions with a per-block relative position bias (only the
            shared bias can be gathered here).
    """
    embeddings = encoder.embeddings
    cls = embeddings.cls_token.to(patch_tokens.dtype)
    if embeddings.position_embeddings is not None:
        cls = cls + embeddings.position_embeddings[:, :1]
    hidden = embeddings.dropout(torch.cat([cls.expand(patch_tokens.shape[0], -1, -1), patch_tokens], dim=1))
    if isinstance(encoder, ViTModel):
        for layer in encoder.layers:
            hidden = layer(hidden)
        return encoder.layernorm(hidden)
    bias = None
    if encoder.shared_position_bias is not None:
        bias = shared_relative_position_bias(encoder, grid_size, positions).to(hidden.dtype)
    per_block_bias = encoder.layers[0].relative_position_bias is not None
    if per_block_bias and positions is not None:
        raise ValueError(
            "a BEiT encoder with a per-block relative position bias (use_relative_position_bias=True) cannot encode a "
            "subset of the patches; use use_shared_relative_position_bias=True (BEiT's pre-training setting)"
        )
    patch_size = encoder.config.patch_size
    resolution = (grid_size[0] * patch_size, grid_size[1] * patch_size)
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=bias, resolution=resolution)
    return encoder.layernorm(hidden)


@torch.no_grad()
def initialize_beit_encoder(encoder: BeitModel, std: float, truncation: float) -> None:
    """The official BEiT / SimMIM-ViT initialisation of a freshly built `BeitModel`.

    Linear and patch-projection weights and the CLS token / absolute positions are drawn from a
    normal of std `std` truncated to ``[-truncation, truncation]``, biases are 0, LayerNorms 1 / 0,
    relative position tables 0, layer scales ``layer_scale_init_value``; then block ``l``
    (1-based) divides its attention output and second MLP weights by ``sqrt(2 l)``
    (``fix_init_weight``). BEiT truncates at one std (beit/modeling_pretrain.py); SimMIM's ViT at
    timm's default 2.0 (models/vision_transformer.py).
    """
    def draw(tensor: torch.Tensor) -> None:
        nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-truncation, b=truncation)

    for module in encoder.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            draw(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    embeddings = encoder.embeddings
    draw(embeddings.cls_token)
    if embeddings.position_embeddings is not None:
        draw(embeddings.position_embeddings)
    value = encoder.config.layer_scale_init_value
    for depth, layer in enumerate(encoder.layers, start=1):
        layer.attention.o_proj.weight.div_(math.sqrt(2.0 * depth))
        layer.mlp.fc2.weight.div_(math.sqrt(2.0 * depth))
        if isinstance(layer.lambda_1, nn.Parameter):
            layer.lambda_1.fill_(value)
            layer.lambda_2.fill_(value)
    for module in encoder.modules():
        table = getattr(module, "relative_position_bias_table", None)
        if isinstance(table, nn.Parameter):
            table.zero_()


__all__ = [
    "BEIT_ENCODER_DEFAULTS",
    "VIT_ENCODER_FIELDS",
    "ENCODER_TYPES",
    "beit_encoder_config",
    "build_encoder",
    "check_beit_fields",
    "embed_patches",
    "encode_tokens",
    "initialize_beit_encoder",
    "shared_relative_position_bias",
    "vit_encoder_config",
]
