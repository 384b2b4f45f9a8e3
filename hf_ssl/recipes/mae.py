"""MAE recipe (He et al. 2021, arXiv:2111.06377): `--method mae` on ViT backbones.

The model is transformers' `ViTMAEForPreTraining` (through `hf_ssl.modeling.mae.ViTForMAE`).
Published pre-training recipe (paper appendix A.1): AdamW, weight decay 0.05, betas (0.9, 0.95),
base learning rate 1.5e-4 * batch / 256, 40 warm-up epochs of 800 (5 %), cosine to 0, no gradient
clipping; random resized crop + flip only; 224 px; mask ratio 0.75; normalised-pixel target;
decoder 512-d, 8 blocks.
"""

from __future__ import annotations

import torch

from hf_ssl.masking.simmim import upsample_patch_mask
from hf_ssl.modeling.mae import MAEConfig, ViTForMAE
from hf_ssl.visualization import ReconstructionPanels

from .base import BuildContext, MethodCard, OptimizerDefaults, Recipe, register_recipe
from .vit_fields import masked_vit_fields

# The paper's decoder (512-d, 8 blocks) is heavier than the whole vit-micro encoder; models up to
# vit-micro's width get a decoder of their own width so tests and the bundled run stay quick.
PAPER_DECODER = dict(
    decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16, decoder_intermediate_size=2048
)
MICRO_DECODER = dict(
    decoder_hidden_size=96, decoder_num_hidden_layers=2, decoder_num_attention_heads=3, decoder_intermediate_size=384
)
MICRO_WIDTH = 96


def mae_panels(model, pixel_values: torch.Tensor, generator: torch.Generator) -> ReconstructionPanels:
    """MAE: per-patch predictions; with `norm_pix_loss` they are mapped back with each true patch's mean/std."""
    batch_size, _, height, width = pixel_values.shape
    patch_size = model.config.patch_size
    grid = (height // patch_size, width // patch_size)
    noise = torch.rand(batch_size, grid[0] * grid[1], generator=generator).to(pixel_values.device)
    outputs = model(pixel_values, noise=noise)
    predicted_patches = outputs.logits  # (B, N, p * p * C)
    if model.config.norm_pix_loss:
        target_patches = model.patchify(pixel_values)
        mean = target_patches.mean(dim=-1, keepdim=True)
        std = (target_patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        predicted_patches = predicted_patches * std + mean
    prediction = model.unpatchify(predicted_patches, original_image_size=(height, width))  # (B, C, H, W)
    hidden = upsample_patch_mask(outputs.mask.cpu().bool(), grid, patch_size)
    return ReconstructionPanels(
        images=pixel_values, hidden=hidden.view(batch_size, height, width), prediction=prediction, target=pixel_values
    )


class MAERecipe(Recipe):
    name = "mae"
    description = "MAE: encode 25% of the patches, reconstruct normalised pixels of the rest (transformers' ViTMAE)"
    registrations = ((MAEConfig, ViTForMAE, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="MAE",
        description=(
            "MAE (He et al. 2021, arXiv:2111.06377) encodes only the visible 25% of patches and reconstructs the "
            "normalised pixels of the masked ones with a light decoder (MSE)."
        ),
        limitation="MIM features are usually stronger after fine-tuning than under a frozen linear probe.",
        tags=("mae", "masked-image-modeling"),
    )
    optimizer = OptimizerDefaults(
        base_learning_rate=1.5e-4,
        reference_batch_size=256,
        weight_decay=0.05,
        betas=(0.9, 0.95),
        warmup_fraction=0.05,
        min_learning_rate_ratio=0.0,
        gradient_clip_norm=None,
    )
    default_model = "vit-small"
    default_image_size = 224
    supported_backbones = ("vit",)
    reconstruction_panels = staticmethod(mae_panels)

    def build_model(self, context: BuildContext):
        settings = masked_vit_fields(self, context.backbone)
        settings.update(MICRO_DECODER if settings["hidden_size"] <= MICRO_WIDTH else PAPER_DECODER)
        settings.update(context.model_overrides)
        return ViTForMAE(MAEConfig(**settings))


MAE = register_recipe(MAERecipe())

__all__ = ["MAE", "MAERecipe", "mae_panels"]
