"""DINO recipe (`--method dino`): self-distillation from an EMA teacher on any backbone.

DINO, Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
arXiv:2104.14294. Every default below is a flag default of facebookresearch/dino ``main_dino.py``
(``get_args_parser``), except the teacher temperature (the paper's warm-up, see below):

- optimizer (``--optimizer adamw``): ``--lr 0.0005`` at a reference batch of 256 (linear scaling
  rule, ``lr * batch / 256``), ``--warmup_epochs 10`` of ``--epochs 100`` (10 % linear warm-up),
  cosine down to ``--min_lr 1e-6`` (1e-6 / 5e-4 = 0.002 of the peak at batch 256), AdamW's default
  betas (0.9, 0.999), ``--weight_decay 0.04`` -> ``--weight_decay_end 0.4`` on a cosine without
  warm-up (``utils.cosine_scheduler``), ``--clip_grad 3.0``;
- weight decay on every parameter but biases and 1-D tensors (``utils.get_params_groups``): unlike
  the other recipes, DINO's CLS token and position embeddings ARE decayed;
- teacher: ``--momentum_teacher 0.996`` raised to 1 on a cosine (``utils.cosine_scheduler(0.996,
  1, ...)``), an EMA of every student parameter after each optimizer step;
- teacher temperature: linear warm-up 0.04 -> 0.07 over the first 30 epochs, then 0.07, indexed by
  epoch like ``DINOLoss.teacher_temp_schedule``: the paper's setting (section 3.1, appendix) and the
  README's "Boosting DINO performance" run (``--teacher_temp 0.07 --warmup_teacher_temp_epochs 30``).
  The script's own flags default to a constant 0.04 (``--warmup_teacher_temp 0.04 --teacher_temp
  0.04 --warmup_teacher_temp_epochs 0``, the README's "vanilla" run): pass ``--teacher_temperature
  0.04`` for that;
- ``--freeze_last_layer 1``: the prototype layer's gradients are dropped during the first epoch
  (``utils.cancel_gradients_last_layer``);
- multi-crop (``DataAugmentationDINO``, `hf_ssl.transforms.multicrop`): ``--global_crops_scale
  0.4 1``, ``--local_crops_number 8``, ``--local_crops_scale 0.05 0.4``, local crops of 96 px for
  224-px global crops;
- head and loss (`hf_ssl.modeling.dino.DINOConfig`): ``--out_dim 65536``, ``--norm_last_layer
  True``, ``--use_bn_in_head False``, student temperature 0.1, centre momentum 0.9.

Images up to `SMALL_IMAGE_SIZE` px (the bundled 32-px digits) get a small head with BatchNorm and
milder crop scales, measured below (`SMALL_IMAGE_HEAD`), and the blur radius scaled by
``image_size / 224``; at 224 px every default is the published one.

Epochs become optimizer steps through ``ScheduleContext.steps_per_epoch``. A stream has no length:
there an epoch is taken to be 1/100 of the run (``max_steps / 100``, the official 100-epoch run),
so the temperature warm-up and the last-layer freeze cover the same fraction of training as in
the official schedule.

Deviations, imposed by the shared training loop: gradients are clipped by their global norm (the
official ``utils.clip_gradients`` clips each parameter tensor's norm to 3.0 separately), and the
student has no stochastic depth (official ``--drop_path_rate 0.1``; transformers' ViT has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hf_ssl.backbones import BackboneSpec
from hf_ssl.ema import momentum_schedule, update_ema
from hf_ssl.heads import cancel_last_layer_gradients
from hf_ssl.losses import teacher_temperature_schedule
from hf_ssl.recipes.base import (
    BuildContext,
    MethodCard,
    OptimizerDefaults,
    Recipe,
    ScheduleContext,
    StepContext,
    register_recipe,
    weight_decay_groups,
)
from hf_ssl.transforms import ImageRowTransform
from hf_ssl.transforms.multicrop import BLUR_RADIUS, GLOBAL_CROP_SIZE, DINOMultiCrop, proportional_local_crop_size

from . import BackboneForDINO, DINOConfig

# A stream of unknown length counts as this many epochs (the official --epochs default).
OFFICIAL_EPOCHS = 100
GLOBAL_CROPS_SCALE = (0.4, 1.0)
LOCAL_CROPS_SCALE = (0.05, 0.4)
# Small images (up to this side; the bundled 32-px digits, 1,438 images) get a small head with
# BatchNorm (the official --use_bn_in_head) and milder crops: on the digits the published head and
# crops collapse to a uniform teacher, and only both changes together learn (docs/small-image-defaults.md).
# A 5 % crop of a 32-px digit is a 7-px square, less than one 8-px patch: two such views share too
# little for the teacher's targets to be predictable from one another.
SMALL_IMAGE_SIZE = 64
SMALL_IMAGE_HEAD = dict(head_output_dim=1024, head_hidden_dim=512, head_bottleneck_dim=128, use_batch_norm_in_head=True)
SMALL_IMAGE_GLOBAL_CROPS_SCALE = (0.7, 1.0)
SMALL_IMAGE_LOCAL_CROPS_SCALE = (0.25, 0.5)


@dataclass
class DINOArguments:
    """DINO's own flags (``--method dino --help``); defaults from main_dino.py, see the module docstring."""

    local_crops_number: int = field(
        default=8, metadata={"help": "Local (small) crops per image seen by the student only; 0 disables multi-crop "
                                     "(then the official code recommends --global_crops_scale 0.14 1)."})
    global_crops_scale: list[float] | None = field(
        default=None, metadata={"help": "Area range of the two global crops (min max); default 0.4 1, or 0.7 1 at "
                                        "--image_size <= 64."})
    local_crops_scale: list[float] | None = field(
        default=None, metadata={"help": "Area range of the local crops (min max); default 0.05 0.4, or 0.25 0.5 at "
                                        "--image_size <= 64."})
    local_crop_size: int | None = field(
        default=None, metadata={"help": "Side of the local crops in pixels (default 96 at --image_size 224, "
                                        "proportional otherwise, rounded to whole ViT patches)."})
    warmup_teacher_temperature: float = field(
        default=0.04, metadata={"help": "Teacher temperature at the first epoch (0.04 works well in most cases; "
                                        "lower it if the loss does not decrease)."})
    teacher_temperature: float = field(
        default=0.07, metadata={"help": "Teacher temperature after the warm-up (paper 0.07; above 0.07 is "
                                        "reported unstable)."})
    warmup_teacher_temperature_epochs: int = field(
        default=30, metadata={"help": "Epochs of the linear teacher-temperature warm-up (paper 30)."})
    momentum_teacher: float = field(
        default=0.996, metadata={"help": "Teacher EMA momentum at step 0, raised to 1 on a cosine (the official code "
                                         "suggests 0.9995 for a batch of 256)."})
    freeze_last_layer: int = field(
        default=1, metadata={"help": "Epochs during which the prototype layer stays fixed (increase if the loss "
                                     "does not decrease)."})
    norm_last_layer: bool = field(
        default=True, metadata={"help": "Keep the prototype layer weight-normalised at gain 1 (False: better with "
                                        "ViT-S but can be unstable)."})


def _check_arguments(arguments: DINOArguments) -> None:
    """Raise a ValueError naming the first unusable flag."""
    if arguments.local_crops_number < 0:
        raise ValueError(f"--local_crops_number must be >= 0, got {arguments.local_crops_number}")
    for name in ("global_crops_scale", "local_crops_scale"):
        scale = getattr(arguments, name)
        if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"--{name} must be two numbers 0 < min <= max <= 1, got {list(scale)}")
    if arguments.local_crop_size is not None and arguments.local_crop_size < 1:
        raise ValueError(f"--local_crop_size must be >= 1, got {arguments.local_crop_size}")
    for name in ("warmup_teacher_temperature", "teacher_temperature"):
        if not getattr(arguments, name) > 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(arguments, name)}")
    if not 0 <= arguments.momentum_teacher <= 1:
        raise ValueError(f"--momentum_teacher must be in [0, 1], got {arguments.momentum_teacher}")
    for name in ("warmup_teacher_temperature_epochs", "freeze_last_layer"):
        if getattr(arguments, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(arguments, name)}")


def _timm_accepts(architecture: str, **model_args) -> torch.nn.Module | None:
    """The timm model built on the meta device with `model_args` (no memory), None when it rejects them."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(architecture, pretrained=False, num_classes=0, **model_args)
    except TypeError:
        return None


def dino_backbone_config(backbone: BackboneSpec) -> dict:
    """The nested backbone config, with ``dynamic_img_size=True`` for timm models that take it (ViTs):
    their position embeddings then follow the local crops' size, as transformers' ViTs do."""
    nested = backbone.nested()
    if backbone.is_timm:
        model_args = dict(nested.get("model_args") or {})
        if _timm_accepts(nested["architecture"], **model_args, dynamic_img_size=True) is not None:
            model_args["dynamic_img_size"] = True
        nested["model_args"] = model_args
    return nested


def backbone_patch_size(backbone: BackboneSpec) -> int:
    """The patch (stem) size local crops are rounded to: a ViT's patch, 1 when the backbone has none."""
    if backbone.is_timm:
        model = _timm_accepts(backbone.config["architecture"], **(backbone.config.get("model_args") or {}))
        patch_size = getattr(getattr(model, "patch_embed", None), "patch_size", 1)
    else:
        patch_size = backbone.config.get("patch_size") or 1
    return int(patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size)


def local_crop_size(context: BuildContext) -> int:
    """``--local_crop_size``, or 96/224 of the image side in whole patches."""
    arguments = context.method_arguments or DINOArguments()
    if arguments.local_crop_size is not None:
        return arguments.local_crop_size
    return proportional_local_crop_size(context.image_size, backbone_patch_size(context.backbone))


def crop_scales(
    arguments: DINOArguments,
    image_size: int,
    published: tuple[tuple[float, float], tuple[float, float]] = (GLOBAL_CROPS_SCALE, LOCAL_CROPS_SCALE),
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(global, local)`` crop area ranges: the flags, else the `published` ones (milder ones for small images)."""
    small = image_size <= SMALL_IMAGE_SIZE
    global_scale = arguments.global_crops_scale or (SMALL_IMAGE_GLOBAL_CROPS_SCALE if small else published[0])
    local_scale = arguments.local_crops_scale or (SMALL_IMAGE_LOCAL_CROPS_SCALE if small else published[1])
    return tuple(global_scale), tuple(local_scale)


def steps_per_epoch(context: ScheduleContext) -> int:
    """Optimizer steps per epoch; a stream counts as `OFFICIAL_EPOCHS` epochs."""
    return context.steps_per_epoch or max(1, round(context.max_steps / OFFICIAL_EPOCHS))


class DINORecipe(Recipe):
    name = "dino"
    description = "DINO (Caron et al. 2021): multi-crop self-distillation from an EMA teacher, any backbone"
    registrations = ((DINOConfig, BackboneForDINO, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="DINO",
        description=(
            "DINO (Caron et al. 2021, arXiv:2104.14294) trains a student network to match the output distribution "
            "of a teacher, an exponential moving average of the student, over K prototypes: the teacher sees two "
            "global crops, the student every crop (multi-crop), and centring plus sharpening of the teacher's "
            "outputs avoid collapse without negatives or labels."
        ),
        limitation=(
            "DINO is sensitive to the teacher temperature, the teacher momentum and the batch size; small batches "
            "and short runs need a higher momentum and care with the temperature."
        ),
        tags=("dino", "self-distillation", "joint-embedding"),
    )
    arguments_class = DINOArguments
    optimizer = OptimizerDefaults(
        base_learning_rate=5e-4,
        reference_batch_size=256,
        weight_decay=0.04,
        final_weight_decay=0.4,
        betas=(0.9, 0.999),
        warmup_fraction=0.1,
        min_learning_rate_ratio=1e-6 / 5e-4,
        gradient_clip_norm=3.0,
    )
    default_model = "vit-small"
    default_image_size = GLOBAL_CROP_SIZE
    bundled_run_defaults = {}
    supported_backbones = ("any",)
    forward_schedule_inputs = ("teacher_temperature",)
    published_crop_scales = (GLOBAL_CROPS_SCALE, LOCAL_CROPS_SCALE)

    def checked_arguments(self, context) -> DINOArguments:
        """The method's flags (their defaults when none were given), checked."""
        arguments = context.method_arguments or self.arguments_class()
        _check_arguments(arguments)
        return arguments

    # ----- inputs

    def build_transform(self, context: BuildContext):
        arguments = self.checked_arguments(context)
        # The official blur radius is in pixels of 224-px crops; smaller images get it scaled down so
        # a blur hides as much of the object as it would at 224 px.
        radius_scale = min(1.0, context.image_size / GLOBAL_CROP_SIZE)
        global_crops_scale, local_crops_scale = crop_scales(arguments, context.image_size, self.published_crop_scales)
        return ImageRowTransform(
            DINOMultiCrop(
                image_size=context.image_size,
                local_crop_size=local_crop_size(context),
                number_of_local_crops=arguments.local_crops_number,
                global_crops_scale=global_crops_scale,
                local_crops_scale=local_crops_scale,
                image_mean=context.image_mean,
                image_std=context.image_std,
                blur_radius=(BLUR_RADIUS[0] * radius_scale, BLUR_RADIUS[1] * radius_scale),
            )
        )

    def describe_views(self, context: BuildContext) -> str:
        local_crops = (context.method_arguments or DINOArguments()).local_crops_number
        local = f" + {local_crops} local crops of {local_crop_size(context)} px" if local_crops else ""
        return f"2 global crops of {context.image_size} px{local}"

    # ----- model

    def build_model(self, context: BuildContext) -> BackboneForDINO:
        arguments = self.checked_arguments(context)
        fields = dict(backbone_config=dino_backbone_config(context.backbone), image_size=context.image_size,
                      norm_last_layer=arguments.norm_last_layer)
        if context.image_size <= SMALL_IMAGE_SIZE:
            fields.update(SMALL_IMAGE_HEAD)
        fields.update(context.model_overrides)
        return BackboneForDINO(DINOConfig(**fields))

    # ----- optimisation

    def parameter_groups(self, model, weight_decay: float) -> list[dict]:
        """The official ``utils.get_params_groups``: biases and 1-D parameters are not decayed, everything
        else is (the CLS token and position embeddings included)."""
        return weight_decay_groups(model, weight_decay, lambda name, parameter: name.endswith(".bias") or parameter.ndim == 1)

    def schedules(self, context: ScheduleContext) -> dict[str, torch.Tensor]:
        """Learning rate and weight decay (base class), plus ``ema_momentum``, ``teacher_temperature``
        (passed to forward) and ``last_layer_frozen`` (1 while the prototype layer is frozen)."""
        schedules = super().schedules(context)
        arguments = self.checked_arguments(context)
        max_steps, epoch_steps = context.max_steps, steps_per_epoch(context)
        warmup_epochs = arguments.warmup_teacher_temperature_epochs
        num_epochs = max(math.ceil(max_steps / epoch_steps), warmup_epochs, 1)
        schedules["teacher_temperature"] = teacher_temperature_schedule(
            num_epochs, epoch_steps, arguments.warmup_teacher_temperature, arguments.teacher_temperature, warmup_epochs
        )[:max_steps]
        schedules["ema_momentum"] = momentum_schedule(arguments.momentum_teacher, max_steps)
        frozen_steps = arguments.freeze_last_layer * epoch_steps
        schedules["last_layer_frozen"] = (torch.arange(max_steps) < frozen_steps).to(torch.float64)
        return schedules

    def after_backward(self, model: BackboneForDINO, step: StepContext) -> None:
        """During the freeze (official first epoch) the prototype layer gets no update."""
        if step.values["last_layer_frozen"] > 0:
            cancel_last_layer_gradients(model.student)

    def after_optimizer_step(self, model: BackboneForDINO, step: StepContext) -> None:
        """teacher <- m * teacher + (1 - m) * student, m from the cosine momentum schedule."""
        update_ema(model.teacher, model.student, step.values["ema_momentum"])


DINO = register_recipe(DINORecipe())

__all__ = ["DINO", "DINOArguments", "DINORecipe", "crop_scales", "dino_backbone_config", "local_crop_size"]
