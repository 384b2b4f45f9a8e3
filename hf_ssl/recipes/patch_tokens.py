"""What the SplitMask and BEiT recipes share: BEiT's published optimizer, encoder, augmentation
source and decay exemptions (SplitMask takes them from BEiT), the published-settings rows they have
in common, the patch-vocabulary fitting before training, and the token-prediction figure."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from hf_ssl.masking import split_indices
from hf_ssl.masking.simmim import upsample_patch_mask
from hf_ssl.visualization import ReconstructionPanels

from .base import BuildContext, OptimizerDefaults
from .published import PublishedSetting, learning_rate_rule, number, paper_config
from .vit_fields import MaskedImageModelingRecipe, beit_pretraining_encoder, masked_vit_fields

# Images up to this side (the bundled 32-px data) get each recipe's `small_image_fields`.
SMALL_IMAGE_SIZE = 64
# BEiT-base on ImageNet-1k: 800 epochs, 10 of warm-up, cosine to min_lr 1e-5 (of 1.5e-3).
BEIT_OPTIMIZER = OptimizerDefaults(
    base_learning_rate=1.5e-3,
    reference_batch_size=2048,
    weight_decay=0.05,
    betas=(0.9, 0.999),
    warmup_fraction=10 / 800,
    min_learning_rate_ratio=1e-5 / 1.5e-3,
    gradient_clip_norm=3.0,
)
BEIT_SOURCE = "microsoft/unilm beit/README.md (ImageNet-1k pre-training of BEiT-base), run_beit_pretraining.py"
MIM_LIMITATION = "MIM features are usually stronger after fine-tuning than under a frozen linear probe."


def _patch_vectors_to_images(vectors: torch.Tensor, grid_size: tuple[int, int], channels: int, image_size: tuple[int, int]) -> torch.Tensor:
    """``(B, N, C * r * r)`` downsampled patch vectors -> ``(B, C, H, W)`` blocky images."""
    batch_size, _, dimension = vectors.shape
    resolution = int(round((dimension // channels) ** 0.5))
    rows, cols = grid_size
    small = vectors.view(batch_size, rows, cols, channels, resolution, resolution)
    small = small.permute(0, 3, 1, 4, 2, 5).reshape(batch_size, channels, rows * resolution, cols * resolution)
    return F.interpolate(small, size=image_size, mode="nearest")


def token_prediction_panels(model, pixel_values: torch.Tensor, mask: torch.Tensor) -> ReconstructionPanels:
    """The figure of a model that predicts vocabulary tokens, not pixels, given the ``(B, N)`` mask
    it is called with (BEiT: True = hidden; SplitMask: the split, whose first view hides group A).

    Each hidden patch is drawn as the codebook vector of its predicted (resp. target) token, scaled
    to the true patch's norm (the codebook holds directions only) and upsampled from ``r x r`` to
    the patch size. A SplitMask model trained without inpainting (``use_mim_loss=False``) predicts
    no token: its prediction panel is blank at the hidden patches."""
    config = model.config
    batch_size, channels, height, width = pixel_values.shape
    grid, num_patches = config.grid_size, config.num_patches
    mask = mask.to(pixel_values.device)
    if getattr(config, "use_mim_loss", True):
        outputs = model(pixel_values, bool_masked_pos=mask)
        hidden_indices = outputs.hidden_patch_indices[:batch_size]  # (B, M)
        predicted, targets = outputs.logits[:batch_size].argmax(dim=-1), outputs.target_token_ids[:batch_size]
    else:
        hidden_indices, _ = split_indices(mask)
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


def published_config(recipe):
    """The config the recipe builds for the paper's ViT-B/16 (what its settings rows describe)."""
    return paper_config(recipe.name, "vit-base")


def _encoder_text(recipe) -> str:
    config = published_config(recipe)
    return (f"{config.encoder_type} encoder: drop path {number(config.drop_path_rate)}, layer scale "
            f"{number(config.layer_scale_init_value)}, shared relative position bias "
            f"{config.use_shared_relative_position_bias}, absolute positions {config.use_absolute_position_embeddings}")


def beit_settings(epochs: str, source: str) -> tuple[PublishedSetting, ...]:
    """The published-settings rows of BEiT's recipe, which SplitMask shares."""
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


class PatchTokenRecipe(MaskedImageModelingRecipe):
    """A recipe whose model predicts patch-tokenizer tokens (SplitMask, BEiT): ViT fields, BEiT's
    encoder, optimizer and decay exemptions, `small_image_fields` up to `SMALL_IMAGE_SIZE`, and
    the vocabulary fitted before training."""

    optimizer = BEIT_OPTIMIZER
    default_model = "vit-small"
    default_image_size = 224
    supported_backbones = ("vit",)
    prepares_model = True
    # BEiT's no_weight_decay() = {pos_embed, cls_token} (both encoders' position tables, hf-ssl names).
    decay_exemptions = ("cls_token", "position_embeddings")
    small_image_fields: dict = {}

    def build_model(self, context: BuildContext):
        fields = masked_vit_fields(self, context.backbone)
        fields.update(beit_pretraining_encoder(context, fields["num_hidden_layers"]))
        if context.image_size <= SMALL_IMAGE_SIZE:
            fields.update(self.small_image_fields)
        fields.update(context.model_overrides)
        return self.model_class(self.config_class(**fields))

    def prepare_model(self, model, pixel_batches: Iterable[torch.Tensor]) -> None:
        """Fit the patch vocabulary on training images (kept when the model already has one)."""
        if model.config.tokenizer_fingerprint is None:
            model.fit_tokenizer(pixel_batches)
