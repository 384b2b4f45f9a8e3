"""MAE recipe (He et al. 2021, arXiv:2111.06377): `--method mae` on ViT backbones.

The model is transformers' `ViTMAEForPreTraining` (through `hf_ssl.modeling.mae.ViTForMAE`), with
MAE's own initialisation. Where each default comes from:

- optimizer: AdamW, betas (0.9, 0.95), weight decay 0.05, base learning rate 1.5e-4 x batch / 256
  (paper appendix A.1, Table 8; facebookresearch/mae main_pretrain.py ``--blr``, PRETRAIN.md:
  batch 4096); no gradient clipping (main_pretrain.py has none);
- schedule: linear warm-up from 0 for 40 epochs, then a half-cycle cosine to 0 (util/lr_sched.py,
  ``--min_lr 0``); the default run takes 40 of 800 epochs (5 %), the 1600-epoch preset 2.5 %;
- weight decay on every parameter with 2 or more dimensions, CLS and mask tokens included
  (main_pretrain.py: timm's ``add_weight_decay`` without a skip list; the sin-cos tables are frozen);
- augmentation: random resized crop, scale 0.2-1, bicubic, + flip (main_pretrain.py ``transform_train``);
- model: mask ratio 0.75, normalised-pixel target (``--norm_pix_loss``, the released models),
  decoder 512-d, 8 blocks, 16 heads (models_mae.py ``mae_vit_base_patch16``), 224 px; xavier-uniform
  Linear layers, N(0, 0.02) tokens (models_mae.py ``initialize_weights``).

Presets: ``mae-vit-base-1600ep`` (the released ViT-B) and ``mae-vit-large-800ep`` (PRETRAIN.md's
recommended command).
"""

from __future__ import annotations

import torch

from hf_ssl.masking.simmim import upsample_patch_mask
from hf_ssl.recipes.base import BuildContext, FinetunePreset, MethodCard, OptimizerDefaults, Preset, register_recipe
from hf_ssl.recipes.published import PublishedSetting, learning_rate_rule, number, paper_config
from hf_ssl.recipes.vit_fields import MaskedImageModelingRecipe, masked_vit_fields
from hf_ssl.transforms.masked import MAE_AUGMENTATION
from hf_ssl.visualization import ReconstructionPanels

from . import MAEConfig, ViTForMAE

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


MAE_SOURCE = "He et al. 2021 (arXiv:2111.06377) appendix A.1; facebookresearch/mae PRETRAIN.md, main_pretrain.py"


def _mae_config(recipe):
    return paper_config(recipe.name, "vit-base")


PUBLISHED_SETTINGS = (
    PublishedSetting("encoder", "ViT-B/16 (ViT-L/16 recommended), 224 px", "main_pretrain.py --model, --input_size",
                     lambda recipe: f"--model {recipe.default_model} at {recipe.default_image_size} px"),
    PublishedSetting("batch size", "4096", "PRETRAIN.md (64 per GPU x 64 GPUs)",
                     lambda recipe: "256 (--total_batch_size)"),
    PublishedSetting("learning rate", "1.5e-4 x batch / 256", "PRETRAIN.md --blr 1.5e-4; main_pretrain.py",
                     lambda recipe: learning_rate_rule(recipe.optimizer)),
    PublishedSetting("optimizer", "AdamW, betas (0.9, 0.95), weight decay 0.05", "main_pretrain.py",
                     lambda recipe: f"AdamW, betas {number(recipe.optimizer.betas)}, weight decay "
                                    f"{number(recipe.optimizer.weight_decay)}"),
    PublishedSetting("schedule", "warm-up 40 epochs from 0, cosine to 0; 800 or 1600 epochs", "util/lr_sched.py",
                     lambda recipe: f"warm-up {number(recipe.optimizer.warmup_fraction)} of --max_steps from 0, "
                                    f"cosine to {number(recipe.optimizer.min_learning_rate_ratio)} x peak"),
    PublishedSetting("gradient clipping", "none", "main_pretrain.py (no --clip_grad)",
                     lambda recipe: number(recipe.optimizer.gradient_clip_norm)),
    PublishedSetting("no weight decay", "parameters < 2-D (biases, norms); CLS and mask tokens are decayed",
                     "main_pretrain.py: timm add_weight_decay, no skip list",
                     lambda recipe: "parameters < 2-D" + (", " + ", ".join(recipe.decay_exemptions)
                                                          if recipe.decay_exemptions else "")),
    PublishedSetting("augmentation", "RandomResizedCrop(scale 0.2-1, bicubic) + flip", "main_pretrain.py",
                     lambda recipe: recipe.augmentation.describe()),
    PublishedSetting("mask", "75 % of the patches, random per image", "paper 3; main_pretrain.py --mask_ratio",
                     lambda recipe: f"mask_ratio {number(_mae_config(recipe).mask_ratio)}"),
    PublishedSetting("target", "per-patch normalised pixels (--norm_pix_loss)", "PRETRAIN.md",
                     lambda recipe: f"norm_pix_loss={_mae_config(recipe).norm_pix_loss}"),
    PublishedSetting("decoder", "512-d, 8 blocks, 16 heads", "models_mae.py mae_vit_base_patch16",
                     lambda recipe: "{}-d, {} blocks, {} heads (widths <= 96: own width, 2 blocks)".format(
                         _mae_config(recipe).decoder_hidden_size, _mae_config(recipe).decoder_num_hidden_layers,
                         _mae_config(recipe).decoder_num_attention_heads)),
    PublishedSetting("initialisation", "xavier-uniform Linear, N(0, 0.02) tokens, fixed sin-cos positions",
                     "models_mae.py initialize_weights, _init_weights",
                     lambda recipe: "the same (ViTForMAE._initialize_like_mae)"),
)


def _mae_preset(name: str, description: str, model: str, epochs: int) -> Preset:
    """MAE's published pre-training of `model` for `epochs` (40 of them warm-up) at batch 4096."""
    return Preset(
        name=name,
        description=description,
        source=MAE_SOURCE,
        arguments=dict(model=model, image_size=224, total_batch_size=4096),
        model_overrides=dict(mask_ratio=0.75, norm_pix_loss=True),
        warmup_fraction=40 / epochs,
        epochs=epochs,
    )


class MAERecipe(MaskedImageModelingRecipe):
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
    augmentation = MAE_AUGMENTATION
    # MAE decays every >= 2-D parameter (its CLS and mask tokens too).
    decay_exemptions: tuple[str, ...] = ()
    published_settings = PUBLISHED_SETTINGS
    finetune_presets = (
        FinetunePreset(
            name="mae-base", description="MAE ViT-B/16, ImageNet-1k",
            source="facebookresearch/mae FINETUNE.md (--batch_size 32 x 32 GPUs --blr 5e-4 --layer_decay 0.65 "
                   "--drop_path 0.1 --epochs 100); main_finetune.py (--warmup_epochs 5, --min_lr 1e-6, --smoothing 0.1)",
            epochs=100, batch_size=1024, base_learning_rate=5e-4, reference_batch_size=256, layer_decay=0.65,
            drop_path_rate=0.1, weight_decay=0.05, warmup_fraction=5 / 100, min_learning_rate_ratio=1e-6 / 2e-3,
            label_smoothing=0.1,
        ),
    )
    presets = (
        _mae_preset("mae-vit-base-1600ep", "MAE ViT-B/16, 1600 epochs (the released checkpoints, paper Table 3)",
                    "vit-base", 1600),
        _mae_preset("mae-vit-large-800ep", "MAE ViT-L/16, 800 epochs (PRETRAIN.md's recommended command)",
                    "vit-large", 800),
    )

    def build_model(self, context: BuildContext):
        settings = masked_vit_fields(self, context.backbone)
        settings.update(MICRO_DECODER if settings["hidden_size"] <= MICRO_WIDTH else PAPER_DECODER)
        settings.update(context.model_overrides)
        return ViTForMAE(MAEConfig(**settings))


MAE = register_recipe(MAERecipe())

__all__ = ["MAE", "MAERecipe", "mae_panels"]
