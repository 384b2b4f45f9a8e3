"""SplitMask recipe (`--method splitmask`) on ViT backbones.

SplitMask (El-Nouby et al. 2021, arXiv:2112.10740): ViT-B/16, patches split into two
disjoint halves, a 2-block decoder, a k-means vocabulary of 8192 8x8x3 patch vectors, the global
descriptor = average of the decoder outputs, loss MIM(A) + MIM(B) + InfoNCE over the global
batch, 300 epochs on ImageNet (the paper's table). What the paper does not give comes from the
BEiT recipe SplitMask builds on: optimizer, clipping, encoder, augmentation, decay exemptions,
10 warm-up epochs (of 300: 3.3 %); the InfoNCE temperature (0.2) and the decoder width (256-d,
8 heads) are hf-ssl's.

The paper's ablation (ImageNet, ViT-B, 300 epochs), one setting per row:

    split  inpaint  match   fine-tune  linear   flags
    no     yes      no      82.8       41.0     --method beit
    yes    yes      no      83.3       46.4     --method splitmask --model_overrides '{"use_contrastive_loss": false}'
    yes    no       yes     79.3        4.0     --method splitmask --model_overrides '{"use_mim_loss": false}'
    yes    yes      yes     83.6       46.5     --method splitmask

Before training, the patch tokenizer's vocabulary is fitted on training images (k-means, the SplitMask paper).
"""

from __future__ import annotations

import dataclasses

import torch

from hf_ssl.masking import random_split_mask
from hf_ssl.recipes.base import MethodCard, Preset, register_recipe
from hf_ssl.recipes.patch_tokens import (
    BEIT_OPTIMIZER,
    BEIT_SOURCE,
    MIM_LIMITATION,
    PatchTokenRecipe,
    beit_settings,
    published_config,
    token_prediction_panels,
)
from hf_ssl.recipes.published import PublishedSetting, number
from hf_ssl.transforms.masked import SPLITMASK_AUGMENTATION
from hf_ssl.visualization import ReconstructionPanels

from . import LegacySplitMaskConfig, SplitMaskConfig, ViTForSplitMask

# SplitMask: BEiT's optimizer over the paper's 300 epochs.
SPLITMASK_OPTIMIZER = dataclasses.replace(BEIT_OPTIMIZER, warmup_fraction=10 / 300)


def split_token_panels(model, pixel_values: torch.Tensor, generator: torch.Generator) -> ReconstructionPanels:
    """The token figure of the first view (group A hidden) of a random split."""
    if model.config.num_patches % 2:
        raise ValueError("the token figure needs an even number of patches (both SplitMask views in one batch)")
    split = random_split_mask(pixel_values.shape[0], model.config.num_patches, generator=generator)
    return token_prediction_panels(model, pixel_values, split)


SPLITMASK_SETTINGS = beit_settings("300 epochs (SplitMask paper table)", "SplitMask paper; BEiT README") + (
    PublishedSetting("split", "two disjoint random halves, each encoded alone", "the SplitMask paper",
                     lambda recipe: "two disjoint random halves (random_split_mask), each encoded alone"),
    PublishedSetting("decoder", "shallow ViT decoder, e.g. 2 blocks (width not given)", "the SplitMask paper",
                     lambda recipe: f"{published_config(recipe).decoder_num_hidden_layers} blocks, "
                                    f"{published_config(recipe).decoder_hidden_size}-d, {published_config(recipe).decoder_num_attention_heads} heads"),
    PublishedSetting("targets", "V = 8192 k-means vectors of 8x8x3 downsampled patches, token = argmax x^T e_i",
                     "the SplitMask paper", lambda recipe: f"V = {published_config(recipe).tokenizer_vocab_size}, "
                                                 f"{published_config(recipe).tokenizer_resolution}x{published_config(recipe).tokenizer_resolution}"
                                                 f"x3, {published_config(recipe).tokenizer_method}"),
    PublishedSetting("loss", "MIM(A) + MIM(B) + InfoNCE", "SplitMask paper (arXiv:2112.10740)",
                     lambda recipe: f"{number(published_config(recipe).mim_loss_weight)} x (MIM(A) + MIM(B)) + "
                                    f"{number(published_config(recipe).contrastive_loss_weight)} x InfoNCE"),
    PublishedSetting("global descriptor", "average of the decoder outputs, no projection", "the SplitMask paper",
                     lambda recipe: "average of the decoder outputs" + (
                         ", projection MLP" if published_config(recipe).use_projection_head else ", no projection")),
    PublishedSetting("InfoNCE temperature", "not given", "the SplitMask paper",
                     lambda recipe: number(published_config(recipe).contrastive_temperature)),
)


class SplitMaskRecipe(PatchTokenRecipe):
    name = "splitmask"
    description = "SplitMask (El-Nouby et al. 2021): split patches into two halves, MIM with patch-tokenizer targets + InfoNCE"
    registrations = (
        (SplitMaskConfig, ViTForSplitMask, ("AutoModel", "AutoModelForPreTraining")),
        (LegacySplitMaskConfig, ViTForSplitMask, ()),  # AutoConfig only: it loads as a SplitMaskConfig
    )
    config_class = SplitMaskConfig
    model_class = ViTForSplitMask
    reconstruction_panels = staticmethod(split_token_panels)
    # Small images (the bundled 32-px data): a vocabulary of 256 and a decoder of the micro model's width.
    small_image_fields = dict(tokenizer_vocab_size=256, decoder_hidden_size=96, decoder_num_attention_heads=4,
                              decoder_intermediate_size=192, projection_dim=96)
    card = MethodCard(
        title="SplitMask",
        description=(
            "SplitMask (El-Nouby et al. 2021, arXiv:2112.10740) splits each image's patches into two disjoint "
            "halves, encodes each half's visible patches, predicts the discrete patch-tokenizer tokens of the "
            "hidden half with a shallow decoder and matches the two halves' global descriptors with InfoNCE."
        ),
        limitation=(
            "The masked-token targets come from a k-means patch tokenizer fitted on the same data; " + MIM_LIMITATION
        ),
        tags=("splitmask", "masked-image-modeling"),
    )
    optimizer = SPLITMASK_OPTIMIZER
    augmentation = SPLITMASK_AUGMENTATION
    published_settings = SPLITMASK_SETTINGS
    documentation_notes = (
        "The ablation rows of the SplitMask paper are one flag set each: split + inpaint + match is the default; split + "
        "inpaint (no matching) is `--model_overrides '{\"use_contrastive_loss\": false}'`; split + match (no "
        "inpainting) is `--model_overrides '{\"use_mim_loss\": false}'`; no split (inpaint only) is `--method beit`. "
        "hf-ssl <= 0.2 averaged the two MIM terms and projected the descriptors; checkpoints saved then keep "
        "that loss when loaded."
    )
    presets = (
        Preset(
            name="splitmask-vit-base",
            description="SplitMask ViT-B/16 at 224 px, 300 epochs (the SplitMask paper's ImageNet table), BEiT's optimizer",
            source="SplitMask paper (El-Nouby et al. 2021, arXiv:2112.10740); optimizer, encoder and augmentation of " + BEIT_SOURCE,
            arguments=dict(model="vit-base", image_size=224, total_batch_size=2048),
            model_overrides=dict(
                encoder_type="beit", drop_path_rate=0.1, layer_scale_init_value=0.1,
                use_absolute_position_embeddings=False, use_shared_relative_position_bias=True,
                decoder_num_hidden_layers=2, tokenizer_vocab_size=8192, tokenizer_resolution=8,
                use_mim_loss=True, use_contrastive_loss=True, mim_loss_weight=1.0, contrastive_loss_weight=1.0,
                use_projection_head=False,
            ),
            warmup_fraction=10 / 300,
            epochs=300,
        ),
    )


SPLITMASK = register_recipe(SplitMaskRecipe())

__all__ = ["SPLITMASK", "SplitMaskRecipe", "split_token_panels"]
