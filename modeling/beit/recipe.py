"""BEiT recipe (`--method beit`) on ViT backbones (Bao et al. 2021, arXiv:2106.08254). The defaults are the official ImageNet-1k pre-training
of BEiT-base (microsoft/unilm beit/README.md, "Pre-training BEiT-base on ImageNet-1k", with
run_beit_pretraining.py's defaults):

- optimizer: AdamW, betas (0.9, 0.999), weight decay 0.05 (constant), learning rate 1.5e-3 at
  batch 2048 (128 x 16 GPUs; the code takes an absolute rate, hf-ssl scales it linearly for
  other batch sizes), gradient clipping 3.0 (``--clip_grad 3.0``);
- schedule: linear warm-up from 0 for 10 of 800 epochs (1.25 %), cosine to ``--min_lr 1e-5``
  (1/150 of the peak; utils.cosine_scheduler);
- weight decay: none on < 2-D parameters, biases and the model's ``no_weight_decay()``
  ``{pos_embed, cls_token}`` (optim_factory.py; the mask token and the shared relative position
  table are decayed);
- augmentation: colour jitter 0.4, flip, random resized crop 0.08-1 bicubic (datasets.py);
- encoder: drop path 0.1, layer scale 0.1, shared relative position bias, no absolute positions
  (``--drop_path 0.1 --layer_scale_init_value 0.1``, ``rel_pos_bias`` on and ``abs_pos_emb`` off by
  default), initialised as modeling_pretrain.py does (truncated normal at one std, residual
  weights / sqrt(2 l)); block-wise masks of 75 of 196 patches (``--num_mask_patches 75``; see
  `BEiTConfig`: hf-ssl states the nominal ratio 0.4, which yields exactly that count).
- targets: the tokens of a k-means patch tokenizer (the SplitMask paper), not BEiT's dVAE.

Small images (up to `hf_ssl.recipes.patch_tokens.SMALL_IMAGE_SIZE`): a vocabulary of 256 tokens.
The vocabulary is fitted on training images before training (k-means, the SplitMask paper).
"""

from __future__ import annotations

import torch

from hf_ssl.masking import beit_mask
from hf_ssl.recipes.base import FinetunePreset, MethodCard, Preset, register_recipe
from hf_ssl.recipes.patch_tokens import (
    BEIT_SOURCE,
    MIM_LIMITATION,
    PatchTokenRecipe,
    beit_settings,
    published_config,
    token_prediction_panels,
)
from hf_ssl.recipes.published import PublishedSetting, number
from hf_ssl.transforms.masked import BEIT_AUGMENTATION
from hf_ssl.visualization import ReconstructionPanels

from . import BEiTConfig, ViTForBEiT


def beit_token_panels(model, pixel_values: torch.Tensor, generator: torch.Generator) -> ReconstructionPanels:
    """The token figure under one mask drawn as in training (`config.mask_strategy`)."""
    config = model.config
    mask = beit_mask(config.mask_strategy, pixel_values.shape[0], config.grid_size, config.mask_ratio, generator=generator)
    return token_prediction_panels(model, pixel_values, mask)


BEIT_SETTINGS = beit_settings("800 epochs (ImageNet-1k)", BEIT_SOURCE) + (
    PublishedSetting("mask", "block-wise, 75 of 196 patches (min 16 per block, aspect 0.3-3.3)",
                     "README --num_mask_patches 75; masking_generator.py",
                     lambda recipe: f"{published_config(recipe).mask_strategy}, mask_ratio "
                                    f"{number(published_config(recipe).mask_ratio)} = "
                                    f"{published_config(recipe).num_masked_patches} of {published_config(recipe).num_patches} patches"),
    PublishedSetting("targets", "8192 dVAE tokens (DALL-E)", "README", lambda recipe: (
        f"{published_config(recipe).tokenizer_vocab_size} k-means patch tokens ({published_config(recipe).tokenizer_method})")),
)


class BEiTRecipe(PatchTokenRecipe):
    name = "beit"
    description = "BEiT (Bao et al. 2021) with a k-means patch tokenizer instead of a dVAE: block-wise MIM"
    config_class = BEiTConfig
    model_class = ViTForBEiT
    registrations = (
        (BEiTConfig, ViTForBEiT, ("AutoModel", "AutoModelForPreTraining", "AutoModelForMaskedImageModeling")),
    )
    card = MethodCard(
        title="BEiT",
        description=(
            "BEiT-style masked image modeling (Bao et al. 2021, arXiv:2106.08254) with a patch-tokenizer "
            "vocabulary instead of a dVAE: blockwise-masked patches are predicted as discrete tokens."
        ),
        limitation=MIM_LIMITATION,
        tags=("beit", "masked-image-modeling"),
    )
    augmentation = BEIT_AUGMENTATION
    published_settings = BEIT_SETTINGS
    reconstruction_panels = staticmethod(beit_token_panels)
    small_image_fields = dict(tokenizer_vocab_size=256)
    documentation_notes = (
        "Mask size: BEiT's code names a count (`--num_mask_patches 75` of 196 at 224 px), the paper a ratio "
        "(40 %). `BEiTConfig` keeps the ratio, `mask_ratio=0.4`, because it carries over to other resolutions, "
        "and turns it into the official count: `num_masked_patches` is 75 on the 14x14 grid and scales with the "
        "grid and the ratio (`hf_ssl.masking.beit_num_masked_patches`). Block-wise masks that stop short of the "
        "count are completed at random, as in BEiT v2 (docs/masking.md)."
    )
    finetune_presets = (
        FinetunePreset(
            name="beit-base", description="BEiT-base after self-supervised pre-training, ImageNet-1k",
            source="microsoft/unilm beit/get_started_for_image_classification.md (BEiT-base: --batch_size 128 x 8 "
                   "GPUs --lr 4e-3 --warmup_epochs 20 --epochs 100 --layer_decay 0.65 --drop_path 0.1); "
                   "run_class_finetuning.py (--min_lr 1e-6, --smoothing 0.1)",
            epochs=100, batch_size=1024, base_learning_rate=4e-3, reference_batch_size=1024, layer_decay=0.65,
            drop_path_rate=0.1, weight_decay=0.05, warmup_fraction=20 / 100, min_learning_rate_ratio=1e-6 / 4e-3,
            label_smoothing=0.1,
        ),
    )
    presets = (
        Preset(
            name="beit-base",
            description="BEiT-base (ViT-B/16) at 224 px, 800 epochs on ImageNet-1k",
            source=BEIT_SOURCE,
            arguments=dict(model="vit-base", image_size=224, total_batch_size=2048),
            model_overrides=dict(
                encoder_type="beit", drop_path_rate=0.1, layer_scale_init_value=0.1,
                use_absolute_position_embeddings=False, use_shared_relative_position_bias=True,
                mask_strategy="blockwise", mask_ratio=0.4, tokenizer_vocab_size=8192,
            ),
            epochs=800,
        ),
    )


BEIT = register_recipe(BEiTRecipe())

__all__ = ["BEIT", "BEiTRecipe", "beit_token_panels"]
