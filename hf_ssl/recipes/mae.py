"""MAE recipe (He et al. 2021, arXiv:2111.06377): `--method mae` on ViT presets.

The model is transformers' `ViTMAEForPreTraining` (through `hf_ssl.modeling.mae`). Published
pre-training recipe (paper appendix A.1): AdamW, weight decay 0.05, betas (0.9, 0.95), base
learning rate 1.5e-4 * batch / 256, 40 warm-up epochs of 800 (5 %), cosine to 0, no gradient
clipping; random resized crop + flip only; 224 px; mask ratio 0.75; normalised-pixel target;
decoder 512-d, 8 blocks.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from hf_ssl.backbones import backbone_preset
from hf_ssl.modeling.mae import MAEConfig, MAEForPreTraining

from .base import OptimizerDefaults, Recipe, register_recipe

SMALL_IMAGE_SIZE = 128

# The paper's decoder (512-d, 8 blocks) is heavier than the whole vit-micro encoder; the CPU-scale
# preset gets a decoder of its own width so tests and the bundled run stay quick.
PAPER_DECODER = dict(
    decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16, decoder_intermediate_size=2048
)
MICRO_DECODER = dict(
    decoder_hidden_size=96, decoder_num_hidden_layers=2, decoder_num_attention_heads=3, decoder_intermediate_size=384
)


def build_mae_model(model_preset: str, image_size: int, overrides: dict) -> PreTrainedModel:
    """MAE model for a ViT preset (``"vit-small"``, ``"vit-micro"``, ...); Swin presets raise."""
    family, fields = backbone_preset(model_preset)
    if family != "vit":
        raise ValueError(f"--method mae needs a ViT preset (vit-micro, vit-tiny, vit-small, ...), got {model_preset!r}")
    settings = {"image_size": image_size, **fields}
    settings["patch_size"] = 4 if image_size < SMALL_IMAGE_SIZE else 16
    settings.update(MICRO_DECODER if model_preset == "vit-micro" else PAPER_DECODER)
    settings.update(overrides)
    return MAEForPreTraining(MAEConfig(**settings))


MAE_RECIPE = register_recipe(
    Recipe(
        name="mae",
        description="MAE: encode 25% of the patches, reconstruct normalised pixels of the rest (transformers' ViTMAE)",
        build_model=build_mae_model,
        augmentation="light",
        optimizer=OptimizerDefaults(
            base_learning_rate=1.5e-4,
            reference_batch_size=256,
            weight_decay=0.05,
            betas=(0.9, 0.95),
            warmup_fraction=0.05,
            min_learning_rate_ratio=0.0,
            gradient_clip_norm=None,
        ),
        default_model="vit-small",
        default_image_size=224,
        is_masked_image_modeling=True,
        tags=("mae", "masked-image-modeling"),
    )
)

__all__ = ["MAE_RECIPE", "build_mae_model"]
