"""SplitMask and BEiT recipes: model from a backbone preset, light augmentation, AdamW defaults.

Optimizer defaults follow BEiT / SplitMask (El-Nouby et al. 2021, appendix): AdamW, base LR
1.5e-3 at batch 2048 (i.e. linear scaling), weight decay 0.05, betas (0.9, 0.999), warm-up then
cosine. Before training, the patch tokenizer's vocabulary is fitted on training images.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from hf_ssl.backbones import backbone_preset
from hf_ssl.modeling.splitmask import BEiTConfig, SplitMaskConfig, ViTForBEiT, ViTForSplitMask

from .base import OptimizerDefaults, Recipe, register_recipe

# Small images (the bundled 32-px data): 8-px patches (4 x 4 grid) and a vocabulary of 256. Measured on
# digits at 32 px: 4-px patches make MIM a local interpolation task and kNN fell below random init
# (0.53 vs 0.70 after 300 steps); 8-px patches reached 0.74 vs 0.60 after 750 steps.
_SMALL_IMAGE_DEFAULTS = dict(patch_size=8, tokenizer_vocab_size=256, decoder_hidden_size=96,
                             decoder_num_attention_heads=4, decoder_intermediate_size=192, projection_dim=96)


def _config_fields(model_preset: str, image_size: int, overrides: dict) -> dict:
    family, fields = backbone_preset(model_preset)
    if family != "vit":
        raise ValueError(f"SplitMask/BEiT need a ViT backbone (vit-*), got {model_preset!r}")
    fields["image_size"] = image_size
    if image_size <= 64:
        fields.update(_SMALL_IMAGE_DEFAULTS)
    fields.update(overrides)
    return fields


def build_splitmask(model_preset: str, image_size: int, overrides: dict) -> ViTForSplitMask:
    return ViTForSplitMask(SplitMaskConfig(**_config_fields(model_preset, image_size, overrides)))


def build_beit(model_preset: str, image_size: int, overrides: dict) -> ViTForBEiT:
    return ViTForBEiT(BEiTConfig(**_config_fields(model_preset, image_size, overrides)))


def fit_patch_tokenizer(model: ViTForSplitMask, image_batches: Iterable[torch.Tensor]) -> None:
    """Fit the model's patch vocabulary on training images (no-op for a model that has one)."""
    if model.config.tokenizer_fingerprint is None:
        model.fit_tokenizer(image_batches)


_OPTIMIZER = OptimizerDefaults(
    base_learning_rate=1.5e-3,
    reference_batch_size=2048,
    weight_decay=0.05,
    betas=(0.9, 0.999),
    warmup_fraction=0.03,
    gradient_clip_norm=3.0,
)

SPLITMASK = register_recipe(
    Recipe(
        name="splitmask",
        description="SplitMask (El-Nouby et al. 2021): split patches into two halves, MIM with patch-tokenizer targets + InfoNCE",
        build_model=build_splitmask,
        augmentation="light",
        optimizer=_OPTIMIZER,
        default_model="vit-small",
        default_image_size=224,
        prepare_model=fit_patch_tokenizer,
        is_masked_image_modeling=True,
        tags=("splitmask", "masked-image-modeling", "self-supervised"),
    )
)

BEIT = register_recipe(
    Recipe(
        name="beit",
        description="BEiT (Bao et al. 2021) with a k-means patch tokenizer instead of a dVAE: block-wise MIM",
        build_model=build_beit,
        augmentation="light",
        optimizer=_OPTIMIZER,
        default_model="vit-small",
        default_image_size=224,
        prepare_model=fit_patch_tokenizer,
        is_masked_image_modeling=True,
        tags=("beit", "masked-image-modeling", "self-supervised"),
    )
)
