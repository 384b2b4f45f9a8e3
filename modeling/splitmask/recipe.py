"""SplitMask and BEiT recipes (`--method splitmask`, `--method beit`) on ViT backbones.

BEiT (Bao et al. 2021, arXiv:2106.08254): the defaults are the official ImageNet-1k pre-training
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
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from hf_ssl.masking import beit_mask, random_split_mask, split_indices
from hf_ssl.masking.simmim import upsample_patch_mask
from hf_ssl.recipes.base import BuildContext, MethodCard, OptimizerDefaults, Preset, register_recipe
from hf_ssl.recipes.published import PublishedSetting, learning_rate_rule, number, paper_config
from hf_ssl.recipes.vit_fields import MaskedImageModelingRecipe, beit_pretraining_encoder, masked_vit_fields
from hf_ssl.transforms.masked import BEIT_AUGMENTATION, SPLITMASK_AUGMENTATION
from hf_ssl.visualization import ReconstructionPanels

from . import BEiTConfig, LegacySplitMaskConfig, SplitMaskConfig, ViTForBEiT, ViTForSplitMask

# Small images (the bundled 32-px data): a vocabulary of 256 and a decoder of the micro model's
# width. Measured on digits at 32 px with 8-px patches: kNN 0.74 vs 0.60 at random init after 750 steps.
SMALL_IMAGE_SIZE = 64
_SMALL_IMAGE_DEFAULTS = dict(tokenizer_vocab_size=256, decoder_hidden_size=96, decoder_num_attention_heads=4,
                             decoder_intermediate_size=192, projection_dim=96)

# BEiT-base on ImageNet-1k: 800 epochs, 10 of warm-up, cosine to min_lr 1e-5 (of 1.5e-3).
_BEIT_OPTIMIZER = OptimizerDefaults(
    base_learning_rate=1.5e-3,
    reference_batch_size=2048,
    weight_decay=0.05,
    betas=(0.9, 0.999),
    warmup_fraction=10 / 800,
    min_learning_rate_ratio=1e-5 / 1.5e-3,
    gradient_clip_norm=3.0,
)
# SplitMask: BEiT's optimizer over the paper's 300 epochs.
_SPLITMASK_OPTIMIZER = dataclasses.replace(_BEIT_OPTIMIZER, warmup_fraction=10 / 300)
BEIT_SOURCE = "microsoft/unilm beit/README.md (ImageNet-1k pre-training of BEiT-base), run_beit_pretraining.py"
_MIM_LIMITATION = "MIM features are usually stronger after fine-tuning than under a frozen linear probe."


def _patch_vectors_to_images(vectors: torch.Tensor, grid_size: tuple[int, int], channels: int, image_size: tuple[int, int]) -> torch.Tensor:
    """``(B, N, C * r * r)`` downsampled patch vectors -> ``(B, C, H, W)`` blocky images."""
    batch_size, _, dimension = vectors.shape
    resolution = int(round((dimension // channels) ** 0.5))
    rows, cols = grid_size
    small = vectors.view(batch_size, rows, cols, channels, resolution, resolution)
    small = small.permute(0, 3, 1, 4, 2, 5).reshape(batch_size, channels, rows * resolution, cols * resolution)
    return F.interpolate(small, size=image_size, mode="nearest")


def token_prediction_panels(model, pixel_values: torch.Tensor, generator: torch.Generator) -> ReconstructionPanels:
    """SplitMask / BEiT predict vocabulary tokens, not pixels: each hidden patch is drawn as the
    codebook vector of its predicted (resp. target) token, scaled to the true patch's norm (the
    codebook holds directions only) and upsampled from ``r x r`` to the patch size. For SplitMask
    the figure shows the first view (group A hidden). A model trained without inpainting
    (``use_mim_loss=False``) predicts no token: its prediction panel is blank at the hidden patches."""
    config = model.config
    batch_size, channels, height, width = pixel_values.shape
    grid, num_patches = config.grid_size, config.num_patches
    if config.objective == "splitmask":
        if num_patches % 2:
            raise ValueError("the token figure needs an even number of patches (both SplitMask views in one batch)")
        mask = random_split_mask(batch_size, num_patches, generator=generator)
    else:
        mask = beit_mask(config.mask_strategy, batch_size, grid, config.mask_ratio, generator=generator)
    mask = mask.to(pixel_values.device)
    if config.use_mim_loss:
        outputs = model(pixel_values, bool_masked_pos=mask)
        hidden_indices = outputs.hidden_patch_indices[:batch_size]  # (B, M)
        predicted, targets = outputs.logits[:batch_size].argmax(dim=-1), outputs.target_token_ids[:batch_size]
    else:
        hidden_indices, _ = split_indices(mask)  # view 1 hides group A
        predicted, targets = None, model.tokenizer.encode(pixel_values).gather(1, hidden_indices)
    vectors = model.tokenizer.vectors(pixel_values)  # (B, N, d)
    index = hidden_indices.unsqueeze(-1).expand(-1, -1, vectors.shape[-1])
    norms = vectors.gather(1, index).norm(dim=-1, keepdim=True)  # (B, M, 1)
    codebook = model.tokenizer.codebook.float()

    def render(tokens: torch.Tensor | None) -> torch.Tensor:
        patches = codebook[tokens] * norms if tokens is not None else torch.zeros_like(norms).expand_as(index)
        drawn = vectors.scatter(1, index, patches.to(vectors.dtype))
        return _patch_vectors_to_images(drawn, grid, channels, (height, width))

    hidden = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=hidden_indices.device)
    hidden.scatter_(1, hidden_indices, True)
    hidden = upsample_patch_mask(hidden.cpu(), grid, config.patch_size).view(batch_size, height, width)
    return ReconstructionPanels(images=pixel_values, hidden=hidden, prediction=render(predicted), target=render(targets))


def _config(recipe):
    return paper_config(recipe.name, "vit-base")


def _encoder_text(recipe) -> str:
    config = _config(recipe)
    return (f"{config.encoder_type} encoder: drop path {number(config.drop_path_rate)}, layer scale "
            f"{number(config.layer_scale_init_value)}, shared relative position bias "
            f"{config.use_shared_relative_position_bias}, absolute positions {config.use_absolute_position_embeddings}")


def _shared_settings(epochs: str, source: str) -> tuple[PublishedSetting, ...]:
    """The rows BEiT and SplitMask share (SplitMask takes them from BEiT)."""
    return (
        PublishedSetting("encoder", "ViT-B/16 at 224 px", source,
                         lambda recipe: f"--model {recipe.default_model} at {recipe.default_image_size} px"),
        PublishedSetting("batch size", "2048", "README (128 x 16 GPUs)", lambda recipe: "256 (--total_batch_size)"),
        PublishedSetting("learning rate", "1.5e-3 at batch 2048", "README --lr 1.5e-3",
                         lambda recipe: learning_rate_rule(recipe.optimizer)),
        PublishedSetting("optimizer", "AdamW, betas (0.9, 0.999), weight decay 0.05", "run_beit_pretraining.py",
                         lambda recipe: f"AdamW, betas {number(recipe.optimizer.betas)}, weight decay "
                                        f"{number(recipe.optimizer.weight_decay)}"),
        PublishedSetting("schedule", f"warm-up 10 epochs from 0, cosine to 1e-5; {epochs}",
                         "README --warmup_epochs 10; --min_lr 1e-5",
                         lambda recipe: f"warm-up {number(recipe.optimizer.warmup_fraction)} of --max_steps from 0, "
                                        f"cosine to {number(recipe.optimizer.min_learning_rate_ratio)} x peak"),
        PublishedSetting("gradient clipping", "3.0", "README --clip_grad 3.0",
                         lambda recipe: number(recipe.optimizer.gradient_clip_norm)),
        PublishedSetting("no weight decay", "< 2-D, biases, pos_embed, cls_token (mask token, relative position "
                         "table decayed)", "optim_factory.py; modeling_pretrain.py no_weight_decay",
                         lambda recipe: "< 2-D, " + ", ".join(recipe.decay_exemptions)),
        PublishedSetting("augmentation", "ColorJitter(0.4) + flip + RandomResizedCrop(scale 0.08-1, bicubic)",
                         "datasets.py DataAugmentationForBEiT", lambda recipe: recipe.augmentation.describe()),
        PublishedSetting("ViT encoder", "drop path 0.1, layer scale 0.1, shared relative position bias, no absolute "
                         "positions", "README; run_beit_pretraining.py defaults", _encoder_text),
        PublishedSetting("initialisation", "truncated normal 0.02 at +-1 std, residual weights / sqrt(2 l)",
                         "modeling_pretrain.py", lambda recipe: "the same (hf_ssl.vit_encoders.initialize_beit_encoder)"),
    )


BEIT_SETTINGS = _shared_settings("800 epochs (ImageNet-1k)", BEIT_SOURCE) + (
    PublishedSetting("mask", "block-wise, 75 of 196 patches (min 16 per block, aspect 0.3-3.3)",
                     "README --num_mask_patches 75; masking_generator.py",
                     lambda recipe: f"{_config(recipe).mask_strategy}, mask_ratio {number(_config(recipe).mask_ratio)} "
                                    f"= {_config(recipe).num_masked_patches} of {_config(recipe).num_patches} patches"),
    PublishedSetting("targets", "8192 dVAE tokens (DALL-E)", "README", lambda recipe: (
        f"{_config(recipe).tokenizer_vocab_size} k-means patch tokens ({_config(recipe).tokenizer_method})")),
)
SPLITMASK_SETTINGS = _shared_settings("300 epochs (SplitMask paper table)", "SplitMask paper; BEiT README") + (
    PublishedSetting("split", "two disjoint random halves, each encoded alone", "the SplitMask paper",
                     lambda recipe: f"objective {_config(recipe).objective}"),
    PublishedSetting("decoder", "shallow ViT decoder, e.g. 2 blocks (width not given)", "the SplitMask paper",
                     lambda recipe: f"{_config(recipe).decoder_num_hidden_layers} blocks, "
                                    f"{_config(recipe).decoder_hidden_size}-d, {_config(recipe).decoder_num_attention_heads} heads"),
    PublishedSetting("targets", "V = 8192 k-means vectors of 8x8x3 downsampled patches, token = argmax x^T e_i",
                     "the SplitMask paper", lambda recipe: f"V = {_config(recipe).tokenizer_vocab_size}, "
                                                 f"{_config(recipe).tokenizer_resolution}x{_config(recipe).tokenizer_resolution}"
                                                 f"x3, {_config(recipe).tokenizer_method}"),
    PublishedSetting("loss", "MIM(A) + MIM(B) + InfoNCE", "SplitMask paper (arXiv:2112.10740)",
                     lambda recipe: f"{number(_config(recipe).mim_loss_weight)} x (MIM(A) + MIM(B)) + "
                                    f"{number(_config(recipe).contrastive_loss_weight)} x InfoNCE"),
    PublishedSetting("global descriptor", "average of the decoder outputs, no projection", "the SplitMask paper",
                     lambda recipe: "average of the decoder outputs" + (
                         ", projection MLP" if _config(recipe).use_projection_head else ", no projection")),
    PublishedSetting("InfoNCE temperature", "not given", "the SplitMask paper",
                     lambda recipe: number(_config(recipe).contrastive_temperature)),
)


class _PatchTokenizerRecipe(MaskedImageModelingRecipe):
    """What SplitMask and BEiT share: ViT fields, BEiT's encoder and decay exemptions, the small-image
    settings, tokenizer fitting."""

    config_class: type = SplitMaskConfig
    model_class: type = ViTForSplitMask
    optimizer = _BEIT_OPTIMIZER
    default_model = "vit-small"
    default_image_size = 224
    supported_backbones = ("vit",)
    prepares_model = True
    reconstruction_panels = staticmethod(token_prediction_panels)
    # BEiT's no_weight_decay() = {pos_embed, cls_token} (both encoders' position tables, hf-ssl names).
    decay_exemptions = ("cls_token", "position_embeddings")

    def build_model(self, context: BuildContext):
        fields = masked_vit_fields(self, context.backbone)
        fields.update(beit_pretraining_encoder(context, fields["num_hidden_layers"]))
        if context.image_size <= SMALL_IMAGE_SIZE:
            fields.update(_SMALL_IMAGE_DEFAULTS)
        fields.update(context.model_overrides)
        return self.model_class(self.config_class(**fields))

    def prepare_model(self, model, pixel_batches: Iterable[torch.Tensor]) -> None:
        """Fit the patch vocabulary on training images (kept when the model already has one)."""
        if model.config.tokenizer_fingerprint is None:
            model.fit_tokenizer(pixel_batches)


class SplitMaskRecipe(_PatchTokenizerRecipe):
    name = "splitmask"
    description = "SplitMask (El-Nouby et al. 2021): split patches into two halves, MIM with patch-tokenizer targets + InfoNCE"
    registrations = (
        (SplitMaskConfig, ViTForSplitMask, ("AutoModel", "AutoModelForPreTraining")),
        (LegacySplitMaskConfig, ViTForSplitMask, ()),  # AutoConfig only: it loads as a SplitMaskConfig
    )
    card = MethodCard(
        title="SplitMask",
        description=(
            "SplitMask (El-Nouby et al. 2021, arXiv:2112.10740) splits each image's patches into two disjoint "
            "halves, encodes each half's visible patches, predicts the discrete patch-tokenizer tokens of the "
            "hidden half with a shallow decoder and matches the two halves' global descriptors with InfoNCE."
        ),
        limitation=(
            "The masked-token targets come from a k-means patch tokenizer fitted on the same data; " + _MIM_LIMITATION
        ),
        tags=("splitmask", "masked-image-modeling"),
    )
    optimizer = _SPLITMASK_OPTIMIZER
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


class BEiTRecipe(_PatchTokenizerRecipe):
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
        limitation=_MIM_LIMITATION,
        tags=("beit", "masked-image-modeling"),
    )
    augmentation = BEIT_AUGMENTATION
    published_settings = BEIT_SETTINGS
    documentation_notes = (
        "Mask size: BEiT's code names a count (`--num_mask_patches 75` of 196 at 224 px), the paper a ratio "
        "(40 %). `BEiTConfig` keeps the ratio, `mask_ratio=0.4`, because it carries over to other resolutions, "
        "and turns it into the official count: `num_masked_patches` is 75 on the 14x14 grid and scales with the "
        "grid and the ratio (`hf_ssl.masking.beit_num_masked_patches`). Block-wise masks that stop short of the "
        "count are completed at random, as in BEiT v2 (docs/masking.md)."
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


SPLITMASK = register_recipe(SplitMaskRecipe())
BEIT = register_recipe(BEiTRecipe())

__all__ = ["BEIT", "SPLITMASK", "BEiTRecipe", "SplitMaskRecipe", "token_prediction_panels"]
