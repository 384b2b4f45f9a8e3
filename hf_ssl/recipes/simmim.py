"""SimMIM recipe (Xie et al. 2021, arXiv:2111.09886): `--method simmim` on Swin or ViT backbones.

Published pre-training recipe (paper section 4.1): AdamW, weight decay 0.05, betas (0.9, 0.999),
learning rate 8e-4 at batch 2048 (the official code writes it as 2e-4 * batch / 512, the same
linear rule), 10 warm-up epochs of 100 (10 %), cosine decay to 5 % of the peak (official configs:
minimum 1e-5 for 2e-4 per 512 images), gradient clipping at 5.0; "light" augmentation (random
resized crop, flip); 192 px for Swin (window 6), 224 px for ViT; random masking, ratio 0.6,
32-px mask patches.
"""

from __future__ import annotations

import torch

from hf_ssl.backbones import SMALL_IMAGE_SIZE, backbone_preset, is_preset
from hf_ssl.masking.simmim import upsample_patch_mask
from hf_ssl.modeling.simmim import SimMIMConfig, SwinForSimMIM, ViTForSimMIM
from hf_ssl.visualization import ReconstructionPanels

from .base import BuildContext, MethodCard, OptimizerDefaults, Recipe, register_recipe
from .vit_fields import masked_vit_fields


def simmim_panels(model, pixel_values: torch.Tensor, generator: torch.Generator) -> ReconstructionPanels:
    """SimMIM: the head predicts every pixel; the loss (and the figure) use the hidden ones."""
    batch_size, _, height, width = pixel_values.shape
    bool_masked_pos = model.mask_generator(batch_size, generator=generator)  # (B, N)
    outputs = model(pixel_values, bool_masked_pos=bool_masked_pos)
    hidden = upsample_patch_mask(outputs.bool_masked_pos.cpu(), model.config.grid_size, model.config.patch_size)
    return ReconstructionPanels(
        images=pixel_values, hidden=hidden.view(batch_size, height, width), prediction=outputs.reconstruction,
        target=pixel_values,
    )


class SimMIMRecipe(Recipe):
    name = "simmim"
    description = "SimMIM: predict raw pixels of randomly masked 32-px patches with a linear head (L1 loss)"
    registrations = (
        # One config type, two model classes: the Auto classes pick one by `config.architectures`
        # (SimMIMConfig fills it from `backbone`), the first of the tuple being the default.
        (SimMIMConfig, (SwinForSimMIM, ViTForSimMIM), ("AutoModel", "AutoModelForPreTraining", "AutoModelForMaskedImageModeling")),
    )
    card = MethodCard(
        title="SimMIM",
        description=(
            "SimMIM (Xie et al. 2021, arXiv:2111.09886) masks large random patches, replaces them with a "
            "learned mask token and regresses their raw pixels with a linear head (L1 loss on masked pixels)."
        ),
        limitation="MIM features are usually stronger after fine-tuning than under a frozen linear probe.",
        tags=("simmim", "masked-image-modeling"),
    )
    optimizer = OptimizerDefaults(
        base_learning_rate=8e-4,
        reference_batch_size=2048,
        weight_decay=0.05,
        betas=(0.9, 0.999),
        warmup_fraction=0.1,
        min_learning_rate_ratio=0.05,
        gradient_clip_norm=5.0,
    )
    default_model = "swin-tiny"
    default_image_size = 192
    supported_backbones = ("swin", "vit")
    reconstruction_panels = staticmethod(simmim_panels)

    def image_size_for(self, backbone_name: str) -> int:
        """SimMIM's published resolution: 192 for Swin, 224 for ViT."""
        if is_preset(backbone_name):
            family, _ = backbone_preset(backbone_name)
            return 192 if family == "swin" else 224
        return 224

    def build_model(self, context: BuildContext):
        fields = masked_vit_fields(self, context.backbone)
        settings = {"backbone": context.backbone.family, **fields}
        # Below SMALL_IMAGE_SIZE a 32-px mask patch would leave a 1x1 grid: 8-px mask patches.
        settings["mask_patch_size"] = 8 if context.image_size < SMALL_IMAGE_SIZE else 32
        settings.update(context.model_overrides)
        config = SimMIMConfig(**settings)
        return SwinForSimMIM(config) if config.backbone == "swin" else ViTForSimMIM(config)


SIMMIM = register_recipe(SimMIMRecipe())

__all__ = ["SIMMIM", "SimMIMRecipe", "simmim_panels"]
