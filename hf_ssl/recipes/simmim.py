"""SimMIM recipe (Xie et al. 2021, arXiv:2111.09886): `--method simmim` on Swin or ViT presets.

Published pre-training recipe (paper section 4.1): AdamW, weight decay 0.05, betas (0.9, 0.999),
learning rate 8e-4 at batch 2048 (the official code writes it as 2e-4 * batch / 512, the same
linear rule), 10 warm-up epochs of 100 (10 %), cosine decay to 5 % of the peak (official configs:
minimum 1e-5 for 2e-4 per 512 images), gradient clipping at 5.0; "light" augmentation (random
resized crop, flip); 192 px for Swin (window 6), 224 px for ViT; random masking, ratio 0.6,
32-px mask patches.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from hf_ssl.backbones import backbone_preset
from hf_ssl.modeling.simmim import SimMIMConfig, SwinForSimMIM, ViTForSimMIM

from .base import OptimizerDefaults, Recipe, register_recipe

# Below this size (CPU-scale data such as the bundled 32-px digits) 16-px ViT patches and 32-px
# mask patches would leave a 2x2 grid or less: use 4-px patches and 8-px mask patches instead.
SMALL_IMAGE_SIZE = 128
LARGEST_SWIN_WINDOW = 7


def swin_window_size(image_size: int, patch_size: int, num_stages: int, largest: int = LARGEST_SWIN_WINDOW) -> int:
    """Largest window <= `largest` that tiles every Swin stage (192 px -> 6, 224 px -> 7, 32 px -> 4).

    A stage no larger than the window is fine (Swin attends over the whole map there).
    """
    resolutions = [image_size // patch_size // 2**stage for stage in range(num_stages)]
    for window in range(largest, 0, -1):
        if all(resolution <= window or resolution % window == 0 for resolution in resolutions):
            return window
    return 1


def build_simmim_model(model_preset: str, image_size: int, overrides: dict) -> PreTrainedModel:
    """SimMIM model for a backbone preset (``"swin-tiny"``, ``"vit-small"``, ``"vit-micro"``, ...)."""
    family, fields = backbone_preset(model_preset)
    small = image_size < SMALL_IMAGE_SIZE
    settings = {"backbone": family, "image_size": image_size, **fields}
    settings["patch_size"] = 4 if (family == "swin" or small) else 16
    settings["mask_patch_size"] = 8 if small else 32
    settings.update(overrides)
    if family == "swin" and "window_size" not in overrides:
        settings["window_size"] = swin_window_size(image_size, settings["patch_size"], len(settings["depths"]))
    config = SimMIMConfig(**settings)
    return SwinForSimMIM(config) if family == "swin" else ViTForSimMIM(config)


def default_image_size_for(model_preset: str) -> int:
    """SimMIM's published resolution for a preset: 192 for Swin, 224 for ViT."""
    family, _ = backbone_preset(model_preset)
    return 192 if family == "swin" else 224


SIMMIM_RECIPE = register_recipe(
    Recipe(
        name="simmim",
        description="SimMIM: predict raw pixels of randomly masked 32-px patches with a linear head (L1 loss)",
        build_model=build_simmim_model,
        augmentation="light",
        optimizer=OptimizerDefaults(
            base_learning_rate=8e-4,
            reference_batch_size=2048,
            weight_decay=0.05,
            betas=(0.9, 0.999),
            warmup_fraction=0.1,
            min_learning_rate_ratio=0.05,
            gradient_clip_norm=5.0,
        ),
        default_model="swin-tiny",
        default_image_size=192,
        image_size_for_model=default_image_size_for,
        is_masked_image_modeling=True,
        tags=("simmim", "masked-image-modeling"),
    )
)


__all__ = ["SIMMIM_RECIPE", "build_simmim_model", "default_image_size_for", "swin_window_size"]
