"""SimMIM recipe (Xie et al. 2021, arXiv:2111.09886): `--method simmim` on Swin or ViT backbones.

Defaults are the paper's main (800-epoch) configuration, the same for Swin-B and ViT-B
(microsoft/SimMIM configs/swin_base__800ep/simmim_pretrain__swin_base__img192_window6__800ep.yaml
and configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml, with config.py's
defaults and main_simmim.py):

- optimizer: AdamW, betas (0.9, 0.999), weight decay 0.05 (``TRAIN.OPTIMIZER``, ``TRAIN.WEIGHT_DECAY``),
  base learning rate 1e-4 x batch / 512 (``BASE_LR: 1e-4``; main_simmim.py scales it linearly by
  the total batch / 512; the paper's batch is 2048), gradient clipping 5.0 (``TRAIN.CLIP_GRAD``);
- schedule: 10 warm-up epochs of 800 (1.25 %) from 0.005 x peak (``WARMUP_LR: 5e-7``), then
  multi-step: x 0.1 at epoch 700 of 800 (``LR_SCHEDULER: multistep, MULTISTEPS: [700], GAMMA: 0.1``;
  lr_scheduler.py). ``--learning_rate_schedule cosine`` gives the 100-epoch Swin configuration's
  cosine (to ``min_learning_rate_ratio`` = 0.05 x peak, ``MIN_LR: 1e-5`` for 2e-4);
- weight decay: none on < 2-D parameters and biases (optimizer.py `get_pretrain_param_groups`),
  plus the encoder's ``no_weight_decay``: ViT ``{pos_embed, cls_token}`` (its mask token and
  relative position table are decayed), Swin ``{absolute_pos_embed, mask_token}`` and the keyword
  ``relative_position_bias_table`` (models/simmim.py, models/vision_transformer.py, models/swin_transformer.py);
- augmentation: random resized crop, scale 0.67-1, bilinear, + flip (data/data_simmim.py);
- model: random masking of 32-px mask patches, ratio 0.6 (``DATA.MASK_PATCH_SIZE``, ``MASK_RATIO``),
  one-layer linear head, L1 on hidden pixels (models/simmim.py); Swin at 192 px, window 6, no
  stochastic depth (``DROP_PATH_RATE: 0.0``); ViT at 224 px is BEiT's ViT: drop path 0.1, layer
  scale 0.1, a shared relative position bias, no absolute positions (``MODEL.VIT`` in the ViT-B
  config and config.py), built as transformers' `BeitModel`.

Presets: ``simmim-vit-base-800ep``, ``simmim-swin-base-800ep`` and ``simmim-swin-base-100ep`` (the
paper's ablation setting, section 4.1: 8e-4 at batch 2048, i.e. 2e-4 x batch / 512, cosine, 10
warm-up epochs of 100).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from hf_ssl.backbones import SMALL_IMAGE_SIZE, backbone_preset, is_preset
from hf_ssl.masking.simmim import upsample_patch_mask
from hf_ssl.recipes.base import (
    BuildContext,
    FinetunePreset,
    MethodCard,
    OptimizerDefaults,
    Preset,
    ScheduleContext,
    register_recipe,
)
from hf_ssl.recipes.published import PublishedSetting, learning_rate_rule, number, paper_config
from hf_ssl.recipes.vit_fields import MaskedImageModelingRecipe, beit_pretraining_encoder, decay_groups, masked_vit_fields
from hf_ssl.transforms.masked import SIMMIM_AUGMENTATION
from hf_ssl.visualization import ReconstructionPanels

from . import SimMIMConfig, SwinForSimMIM, ViTForSimMIM

SIMMIM_SOURCE = "microsoft/SimMIM configs/{}, config.py, main_simmim.py"
# Warm-up starts at WARMUP_LR = 5e-7 for BASE_LR 1e-4 (800 epochs), 1e-6 for 2e-4 (100 epochs).
WARMUP_START_RATIO = 0.005
# The 800-epoch configs decay the learning rate once, at epoch 700.
MILESTONES_800_EPOCHS = (700 / 800,)
SCHEDULES = ("multistep", "cosine")


@dataclass
class SimMIMArguments:
    """SimMIM's own flags: the shape of the learning-rate schedule."""

    learning_rate_schedule: Literal["multistep", "cosine"] = field(
        default="multistep",
        metadata={"help": "multistep (the 800-epoch configs: x decay factor at each milestone) or cosine (the "
                          "100-epoch Swin config, to min_learning_rate_ratio x peak)."},
    )
    learning_rate_milestones: list[float] = field(
        default_factory=lambda: list(MILESTONES_800_EPOCHS),
        metadata={"help": "Fractions of --max_steps where multistep multiplies the learning rate by "
                          "--learning_rate_decay_factor (800-epoch configs: 700/800 = 0.875)."},
    )
    learning_rate_decay_factor: float = field(default=0.1, metadata={"help": "Multistep factor (GAMMA: 0.1)."})

    def __post_init__(self):
        if self.learning_rate_schedule not in SCHEDULES:
            raise ValueError(f"learning_rate_schedule must be one of {SCHEDULES}, got {self.learning_rate_schedule!r}")
        if not all(0.0 < milestone < 1.0 for milestone in self.learning_rate_milestones):
            raise ValueError(f"learning_rate_milestones must be fractions of the run in (0, 1), got {self.learning_rate_milestones}")
        if not 0.0 < self.learning_rate_decay_factor <= 1.0:
            raise ValueError(f"learning_rate_decay_factor must be in (0, 1], got {self.learning_rate_decay_factor}")


def simmim_learning_rates(
    peak: float, max_steps: int, warmup_steps: int, arguments: SimMIMArguments, min_learning_rate_ratio: float
) -> torch.Tensor:
    """SimMIM's per-step learning rate (timm schedulers as lr_scheduler.py builds them).

    Warm-up: linear from ``WARMUP_START_RATIO * peak`` towards the peak over `warmup_steps`. Then
    multistep: ``peak * factor ** (milestones passed)``, milestone ``m`` at step ``round(m * max_steps)``;
    or cosine over the whole run (timm counts the warm-up steps in the cosine):
    ``min + (peak - min) * (1 + cos(pi * t / max_steps)) / 2``.

    Returns:
        ``(max_steps,)`` float64.
    """
    start = WARMUP_START_RATIO * peak
    steps = torch.arange(max_steps, dtype=torch.float64)
    if arguments.learning_rate_schedule == "multistep":
        milestones = torch.tensor([round(m * max_steps) for m in arguments.learning_rate_milestones], dtype=torch.float64)
        passed = (steps.unsqueeze(1) >= milestones.unsqueeze(0)).sum(dim=1)
        values = peak * arguments.learning_rate_decay_factor ** passed.to(torch.float64)
    else:
        minimum = min_learning_rate_ratio * peak
        values = minimum + (peak - minimum) * (1 + torch.cos(math.pi * steps / max_steps)) / 2
    if warmup_steps > 0:
        warmup = start + (peak - start) * steps[:warmup_steps] / warmup_steps
        values[:warmup_steps] = warmup
    return values


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


def _vit(recipe):
    return paper_config(recipe.name, "vit-base")


def _swin(recipe):
    return paper_config(recipe.name, "swin-base")


def _schedule_text(recipe) -> str:
    arguments = recipe.method_arguments_defaults()
    warmup = f"warm-up {number(recipe.optimizer.warmup_fraction)} of --max_steps from {WARMUP_START_RATIO:g} x peak"
    if arguments.learning_rate_schedule == "multistep":
        return (f"{warmup}, then x {number(arguments.learning_rate_decay_factor)} at "
                f"{number(arguments.learning_rate_milestones)} of --max_steps")
    return f"{warmup}, cosine to {number(recipe.optimizer.min_learning_rate_ratio)} x peak"


PUBLISHED_SETTINGS = (
    PublishedSetting("encoders", "Swin-B at 192 px (window 6); ViT-B/16 at 224 px",
                     "configs/swin_base__800ep, configs/vit_base__800ep",
                     lambda recipe: f"--model {recipe.default_model} at {recipe.image_size_for(recipe.default_model)} px; "
                                    f"ViT presets at {recipe.image_size_for('vit-base')} px"),
    PublishedSetting("batch size", "2048", "paper 4.1", lambda recipe: "256 (--total_batch_size)"),
    PublishedSetting("learning rate", "1e-4 x batch / 512 (800 epochs); 2e-4 x batch / 512 (Swin, 100 epochs)",
                     "BASE_LR in the configs; main_simmim.py linear scaling",
                     lambda recipe: learning_rate_rule(recipe.optimizer)),
    PublishedSetting("optimizer", "AdamW, betas (0.9, 0.999), weight decay 0.05", "config.py TRAIN.OPTIMIZER",
                     lambda recipe: f"AdamW, betas {number(recipe.optimizer.betas)}, weight decay "
                                    f"{number(recipe.optimizer.weight_decay)}"),
    PublishedSetting("schedule", "warm-up 10 epochs from WARMUP_LR (0.005 x peak), x 0.1 at epoch 700 of 800 "
                     "(Swin 100 epochs: cosine to 0.05 x peak)", "LR_SCHEDULER in the configs; lr_scheduler.py",
                     _schedule_text),
    PublishedSetting("gradient clipping", "5.0", "config.py TRAIN.CLIP_GRAD",
                     lambda recipe: number(recipe.optimizer.gradient_clip_norm)),
    PublishedSetting("no weight decay", "< 2-D, biases; ViT: pos_embed, cls_token (mask token and relative "
                     "position table decayed); Swin: absolute_pos_embed, mask_token, relative_position_bias_table",
                     "optimizer.py get_pretrain_param_groups; no_weight_decay() of the encoders",
                     lambda recipe: f"< 2-D; ViT: {', '.join(recipe.vit_decay_exemptions)}; "
                                    f"Swin: {', '.join(recipe.swin_decay_exemptions)}"),
    PublishedSetting("augmentation", "RandomResizedCrop(scale 0.67-1, bilinear) + flip", "data/data_simmim.py",
                     lambda recipe: recipe.augmentation.describe()),
    PublishedSetting("mask", "ratio 0.6 of 32-px mask patches, random", "DATA.MASK_RATIO, DATA.MASK_PATCH_SIZE",
                     lambda recipe: f"ratio {number(_vit(recipe).mask_ratio)} of {_vit(recipe).mask_patch_size}-px "
                                    f"mask patches, {_vit(recipe).mask_strategy} (8-px below 64 px images)"),
    PublishedSetting("ViT encoder", "drop path 0.1, layer scale 0.1, shared relative position bias, no absolute "
                     "positions", "configs/vit_base__800ep MODEL.VIT; config.py INIT_VALUES",
                     lambda recipe: "{} encoder: drop path {}, layer scale {}, shared relative position bias {}, "
                                    "absolute positions {}".format(
                                        _vit(recipe).encoder_type, number(_vit(recipe).drop_path_rate),
                                        number(_vit(recipe).layer_scale_init_value),
                                        _vit(recipe).use_shared_relative_position_bias,
                                        _vit(recipe).use_absolute_position_embeddings)),
    PublishedSetting("Swin encoder", "window 6 at 192 px, drop path 0.0", "configs/swin_base__800ep",
                     lambda recipe: f"window {_swin(recipe).window_size} at {_swin(recipe).image_size} px, drop path "
                                    f"{number(_swin(recipe).drop_path_rate)}"),
    PublishedSetting("initialisation", "ViT: truncated normal 0.02 (+-2), residual weights / sqrt(2 l), mask token "
                     "truncated at one std; head: PyTorch default", "models/vision_transformer.py, models/simmim.py",
                     lambda recipe: "the same for the BEiT-style ViT (hf_ssl.vit_encoders.initialize_beit_encoder)"),
)


# The fine-tuning settings SimMIM's ViT-B and Swin-B configs share.
_SIMMIM_FINETUNE = dict(
    epochs=100, batch_size=2048, base_learning_rate=1.25e-3, reference_batch_size=512, drop_path_rate=0.1,
    weight_decay=0.05, warmup_fraction=20 / 100, min_learning_rate_ratio=2.5e-7 / 1.25e-3, label_smoothing=0.1,
)


class SimMIMRecipe(MaskedImageModelingRecipe):
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
        base_learning_rate=1e-4,
        reference_batch_size=512,
        weight_decay=0.05,
        betas=(0.9, 0.999),
        warmup_fraction=10 / 800,
        min_learning_rate_ratio=0.05,
        gradient_clip_norm=5.0,
    )
    arguments_class = SimMIMArguments
    default_model = "swin-tiny"
    default_image_size = 192
    supported_backbones = ("swin", "vit")
    reconstruction_panels = staticmethod(simmim_panels)
    augmentation = SIMMIM_AUGMENTATION
    vit_decay_exemptions = ("cls_token", "position_embeddings")
    swin_decay_exemptions = ("position_embeddings", "mask_token", "relative_position_bias_table")
    published_settings = PUBLISHED_SETTINGS
    finetune_presets = (
        FinetunePreset(
            name="simmim-vit-base", description="SimMIM ViT-B/16 (800-epoch pre-training), ImageNet-1k at 224 px",
            source="microsoft/SimMIM configs/vit_base__800ep/simmim_finetune__vit_base__img224__800ep.yaml; "
                   "main_finetune.py (batch 128 x 16 GPUs, BASE_LR x batch / 512), config.py (LABEL_SMOOTHING 0.1)",
            layer_decay=0.65, **_SIMMIM_FINETUNE,
        ),
        FinetunePreset(
            name="simmim-swin-base", description="SimMIM Swin-B (100-epoch pre-training), ImageNet-1k",
            source="microsoft/SimMIM configs/swin_base__100ep/simmim_finetune__swin_base__img224_window7__100ep.yaml; "
                   "main_finetune.py, config.py",
            layer_decay=0.9, **_SIMMIM_FINETUNE,
        ),
        FinetunePreset(
            name="simmim-swin-base-800ep", description="SimMIM Swin-B (800-epoch pre-training), ImageNet-1k",
            source="microsoft/SimMIM configs/swin_base__800ep/simmim_finetune__swin_base__img224_window7__800ep.yaml; "
                   "main_finetune.py, config.py",
            layer_decay=0.8, **_SIMMIM_FINETUNE,
        ),
    )
    presets = (
        Preset(
            name="simmim-vit-base-800ep",
            description="SimMIM ViT-B/16 at 224 px, 800 epochs (paper Table 1)",
            source=SIMMIM_SOURCE.format("vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml"),
            arguments=dict(model="vit-base", image_size=224, total_batch_size=2048),
            model_overrides=dict(encoder_type="beit", drop_path_rate=0.1, layer_scale_init_value=0.1,
                                 use_absolute_position_embeddings=False, use_shared_relative_position_bias=True,
                                 mask_ratio=0.6, mask_patch_size=32),
            epochs=800,
        ),
        Preset(
            name="simmim-swin-base-800ep",
            description="SimMIM Swin-B at 192 px (window 6), 800 epochs",
            source=SIMMIM_SOURCE.format("swin_base__800ep/simmim_pretrain__swin_base__img192_window6__800ep.yaml"),
            arguments=dict(model="swin-base", image_size=192, total_batch_size=2048),
            model_overrides=dict(window_size=6, drop_path_rate=0.0, mask_ratio=0.6, mask_patch_size=32),
            epochs=800,
        ),
        Preset(
            name="simmim-swin-base-100ep",
            description="SimMIM Swin-B at 192 px (window 6), 100 epochs, cosine (the paper's ablation setting, 4.1)",
            source=SIMMIM_SOURCE.format("swin_base__100ep/simmim_pretrain__swin_base__img192_window6__100ep.yaml"),
            arguments=dict(model="swin-base", image_size=192, total_batch_size=2048, learning_rate_schedule="cosine"),
            model_overrides=dict(window_size=6, drop_path_rate=0.0, mask_ratio=0.6, mask_patch_size=32),
            base_learning_rate=2e-4,
            reference_batch_size=512,
            warmup_fraction=10 / 100,
            epochs=100,
        ),
    )

    def image_size_for(self, backbone_name: str) -> int:
        """SimMIM's published resolution: 192 for Swin, 224 for ViT."""
        if is_preset(backbone_name):
            family, _ = backbone_preset(backbone_name)
            return 192 if family == "swin" else 224
        return 224

    def build_model(self, context: BuildContext):
        fields = masked_vit_fields(self, context.backbone)
        settings = {"backbone": context.backbone.family, **fields}
        if context.backbone.family == "vit":
            settings.update(beit_pretraining_encoder(context, fields["num_hidden_layers"]))
        # Below SMALL_IMAGE_SIZE a 32-px mask patch would leave a 1x1 grid: 8-px mask patches.
        settings["mask_patch_size"] = 8 if context.image_size < SMALL_IMAGE_SIZE else 32
        settings.update(context.model_overrides)
        config = SimMIMConfig(**settings)
        return SwinForSimMIM(config) if config.backbone == "swin" else ViTForSimMIM(config)

    def parameter_groups(self, model, weight_decay: float) -> list[dict]:
        exemptions = self.swin_decay_exemptions if isinstance(model, SwinForSimMIM) else self.vit_decay_exemptions
        return decay_groups(model, weight_decay, exemptions)

    def schedules(self, context: ScheduleContext) -> dict[str, torch.Tensor]:
        schedules = super().schedules(context)
        arguments = context.method_arguments or self.method_arguments_defaults()
        schedules["learning_rate"] = simmim_learning_rates(
            context.learning_rate, context.max_steps, context.warmup_steps, arguments,
            self.optimizer.min_learning_rate_ratio,
        )
        return schedules


SIMMIM = register_recipe(SimMIMRecipe())

__all__ = ["SIMMIM", "SimMIMArguments", "SimMIMRecipe", "simmim_learning_rates", "simmim_panels"]
