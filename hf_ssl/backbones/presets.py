"""Named backbone sizes shared by every method (``--model vit-small``), and the small-image rule.

A preset is a dict of HF config fields; `preset_config` turns it into the `ViTConfig` /
`SwinConfig` / `ResNetConfig` / `Dinov2WithRegistersConfig` of a given input size, so that the
exported encoder is a plain transformers model of that size.
"""

from __future__ import annotations

from transformers import Dinov2WithRegistersConfig, PreTrainedConfig, ResNetConfig, SwinConfig, ViTConfig

VIT_PRESETS: dict[str, dict] = {
    # A ViT small enough to pre-train on 2 CPU cores in minutes (the bundled default run, tests).
    "vit-micro": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384),
    "vit-tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "vit-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vit-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "vit-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}

SWIN_PRESETS: dict[str, dict] = {
    "swin-micro": dict(embed_dim=48, depths=[2, 2], num_heads=[3, 6]),
    "swin-tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "swin-small": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    "swin-base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}

RESNET_PRESETS: dict[str, dict] = {
    # A conv net small enough to pre-train on 2 CPU cores in minutes: one basic block per stage,
    # 32-256 channels (1.2 M parameters). Supervised from random init (the fine-tuning protocol,
    # all labels) it reaches 0.93 on the bundled 48-px scenes, where vit-micro reaches 0.71-0.83.
    "resnet-micro": dict(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic",
                         downsample_in_first_stage=False),
    # A quarter of resnet-micro (16-128 channels, 0.3 M parameters): a student to distil into.
    "resnet-nano": dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
                        downsample_in_first_stage=False),
    "resnet-18": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic",
                      downsample_in_first_stage=False),
    "resnet-50": dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck",
                      downsample_in_first_stage=False),
}
# DINOv2's ViTs (facebookresearch/dinov2 vision_transformer.py vit_small / vit_base) with 4 register
# tokens (Darcet et al. 2024, arXiv:2309.16588): transformers' Dinov2WithRegistersModel, whose mask
# token the iBOT term of `--method dinov2` needs. micro is vit-micro's size.
DINOV2_PRESETS: dict[str, dict] = {
    "dinov2-micro": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=3),
    "dinov2-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "dinov2-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
}
DINOV2_NUM_REGISTER_TOKENS = 4
# dinov2/configs/ssl_default_config.yaml: student.layerscale (transformers' default is 1.0, the
# value its converted checkpoints overwrite anyway).
DINOV2_LAYERSCALE = 1e-5
DINOV2_PATCH_SIZE = 14
_PRESETS = {"vit": VIT_PRESETS, "swin": SWIN_PRESETS, "resnet": RESNET_PRESETS, "dinov2": DINOV2_PRESETS}

# Below this side the published 16-px ViT patches leave a grid too coarse to mask (2x2 at 32 px).
SMALL_IMAGE_SIZE = 128
LARGEST_SWIN_WINDOW = 7
# timm, MAE, BEiT, SimMIM and DINO all build their ViTs with LayerNorm eps 1e-6 (transformers'
# ViTConfig default is 1e-12); 1e-6 also makes the timm export compute the same features.
VIT_LAYER_NORM_EPS = 1e-6


def available_presets() -> list[str]:
    return [name for presets in _PRESETS.values() for name in sorted(presets)]


def is_preset(name: str) -> bool:
    return any(name in presets for presets in _PRESETS.values())


def backbone_preset(name: str) -> tuple[str, dict]:
    """Return ``(family, config_fields)`` for a preset name such as ``"vit-small"``.

    Raises:
        ValueError: the name is not a known preset; the message lists the known ones.
    """
    for family, presets in _PRESETS.items():
        if name in presets:
            return family, {key: list(value) if isinstance(value, list) else value for key, value in presets[name].items()}
    raise ValueError(f"Unknown model preset {name!r}; known presets: {', '.join(available_presets())}")


def vit_patch_size(image_size: int) -> int:
    """The one small-image rule every recipe uses for ViT patches.

    16 px (the papers') from `SMALL_IMAGE_SIZE` up; 8 px below it, down to 32 px (a 4x4 grid at the
    bundled 32-px data: measured with SplitMask on digits, 4-px patches turn masked prediction into
    local interpolation and kNN fell below random init, 0.53 vs 0.70, while 8-px patches reached
    0.74); 4 px below 32 px.
    """
    if image_size >= SMALL_IMAGE_SIZE:
        return 16
    return 8 if image_size >= 32 else 4


def swin_stage_resolutions(image_size: int, patch_size: int, num_stages: int) -> list[int]:
    """Tokens per side of each Swin stage (each halves the map): 224 px, patch 4, 4 stages -> [56, 28, 14, 7]."""
    return [image_size // patch_size // 2**stage for stage in range(num_stages)]


def swin_window_size(image_size: int, patch_size: int, num_stages: int, largest: int = LARGEST_SWIN_WINDOW) -> int:
    """Largest window <= `largest` that tiles every Swin stage (192 px -> 6, 224 px -> 7, 2 stages at 32 px -> 4).

    Every stage must be a multiple of the window: transformers 5's Swin fails on a stage smaller
    than its window (the shrunk window's attention mask no longer fits: measured, e.g. 4 stages at
    64 px with window 4 fail on the 2x2 last stage, window 2 runs).
    """
    resolutions = swin_stage_resolutions(image_size, patch_size, num_stages)
    for window in range(largest, 0, -1):
        if all(resolution % window == 0 for resolution in resolutions):
            return window
    return 1


def preset_config(name: str, image_size: int) -> PreTrainedConfig:
    """The transformers config of preset `name` at `image_size` (ViT patch from `vit_patch_size`, DINOv2's
    14 px where it tiles the image; a ResNet's global pooling takes any size)."""
    family, fields = backbone_preset(name)
    if family == "resnet":
        return ResNetConfig(**fields)
    if family == "vit":
        return ViTConfig(
            image_size=image_size,
            patch_size=vit_patch_size(image_size),
            layer_norm_eps=VIT_LAYER_NORM_EPS,
            qkv_bias=True,
            encoder_stride=vit_patch_size(image_size),
            **fields,
        )
    if family == "dinov2":
        # 14-px patches as published where they tile the image (224 px), else the ViT rule.
        large = image_size >= SMALL_IMAGE_SIZE and image_size % DINOV2_PATCH_SIZE == 0
        return Dinov2WithRegistersConfig(
            image_size=image_size,
            patch_size=DINOV2_PATCH_SIZE if large else vit_patch_size(image_size),
            num_register_tokens=DINOV2_NUM_REGISTER_TOKENS,
            layerscale_value=DINOV2_LAYERSCALE,
            mlp_ratio=4,
            **fields,
        )
    stages = len(fields["depths"])
    window_size = swin_window_size(image_size, 4, stages)
    if window_size < 2:  # 1x1 windows: no attention at all
        stride = 4 * 2 ** (stages - 1)  # pixels per token of the last stage
        raise ValueError(f"{name} has {stages} stages, each halving the map: at {image_size} px they are "
                         f"{swin_stage_resolutions(image_size, 4, stages)} "
                         f"patches wide, which no window of 2 to {LARGEST_SWIN_WINDOW} tiles; use e.g. "
                         f"{', '.join(str(stride * factor) for factor in (2, 3, 4, 6))} or {stride * 7} px")
    return SwinConfig(image_size=image_size, patch_size=4, window_size=window_size, **fields)


__all__ = [
    "DINOV2_PRESETS",
    "RESNET_PRESETS",
    "SMALL_IMAGE_SIZE",
    "SWIN_PRESETS",
    "VIT_LAYER_NORM_EPS",
    "VIT_PRESETS",
    "available_presets",
    "backbone_preset",
    "is_preset",
    "preset_config",
    "swin_window_size",
    "vit_patch_size",
]
