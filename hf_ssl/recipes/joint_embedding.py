"""What the six joint-embedding recipes share (SimCLR, MoCo v3, BYOL, SimSiam, Barlow Twins, VICReg).

Each method keeps its own recipe module (``modeling/<method>/recipe.py``) with its published settings
and their sources; this module holds the parts that are the same for all of them:

- any backbone (``supported_backbones = ("any",)``), 224 px by default, two views per image from
  the method's published pipeline (`hf_ssl.transforms.two_views`), stacked as ``pixel_values``
  ``(2, 3, H, W)`` per row;
- small images (the bundled 32-px digits, anything below `SMALL_IMAGE_SIZE`): each recipe's
  smaller heads (`Recipe.small_image_fields`) and a milder crop (`SMALL_IMAGE_CROP_SCALE`);
- the optimizer: hf-ssl's loop builds AdamW, while SimCLR, BYOL, Barlow Twins and VICReg publish
  LARS and SimSiam SGD; the one AdamW recipe published by the six official codebases is MoCo v3's
  for ViTs (`MOCO_V3_VIT_ADAMW`), which every joint-embedding recipe uses; each recipe's docstring
  lists its own published optimizer next to it;
- momentum encoders (MoCo v3, BYOL): an ``ema_momentum`` schedule, a cosine from
  ``--base_momentum`` to 1 (`hf_ssl.ema.momentum_schedule`), applied after every optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hf_ssl.backbones import SMALL_IMAGE_SIZE
from hf_ssl.ema import momentum_schedule
from hf_ssl.transforms import ImageRowTransform
from hf_ssl.transforms.two_views import two_view_transform

from .base import BuildContext, OptimizerDefaults, Recipe, ScheduleContext, StepContext

# facebookresearch/moco-v3 CONFIG.md, ViT-S and ViT-B: --optimizer=adamw --lr=1.5e-4 (x batch / 256)
# --weight-decay=.1 --epochs=300 --warmup-epochs=40; torch.optim.AdamW's default betas; cosine to 0
# (main_moco.py adjust_learning_rate); no gradient clipping. The official code decays every
# parameter; hf-ssl's parameter groups exempt biases, norms, tokens and position tables.
MOCO_V3_VIT_ADAMW = OptimizerDefaults(
    base_learning_rate=1.5e-4,
    reference_batch_size=256,
    weight_decay=0.1,
    betas=(0.9, 0.999),
    warmup_fraction=40 / 300,
    min_learning_rate_ratio=0.0,
    gradient_clip_norm=None,
)

# The published crops keep 8-100 % (20-100 % for SimSiam) of a 224-px photo. On 32-px digits an 8 %
# crop is a 9-px fragment of one stroke; on the bundled digits a 25-100 % crop is what lets every
# method beat random init (docs/small-image-defaults.md; tests/test_joint_embedding.py). A recipe
# may measure its own (`JointEmbeddingRecipe.small_image_crop_scale`).
SMALL_IMAGE_CROP_SCALE = (0.25, 1.0)


class JointEmbeddingRecipe(Recipe):
    """A two-view joint-embedding method on any backbone.

    Class attributes a subclass sets (besides `Recipe`'s):
        config_class, model_class: the method's config and model.
        augmentation: the two-view pipeline name (``"simclr"``, ``"byol"``, ``"simsiam"``).
        small_image_fields: config fields used below `SMALL_IMAGE_SIZE` (smaller heads).
        small_image_crop_scale: the crops' area range below `SMALL_IMAGE_SIZE`.
    """

    config_class: type
    model_class: type
    augmentation: str = "byol"
    small_image_fields: dict = {}
    small_image_crop_scale: tuple[float, float] = SMALL_IMAGE_CROP_SCALE
    optimizer = MOCO_V3_VIT_ADAMW
    default_model = "vit-small"
    default_image_size = 224
    supported_backbones = ("any",)

    def build_transform(self, context: BuildContext):
        """Two views of each row's image: ``{"pixel_values": (2, 3, H, W)}``."""
        crop_scale = self.small_image_crop_scale if context.image_size < SMALL_IMAGE_SIZE else None
        return ImageRowTransform(
            two_view_transform(self.augmentation, context.image_size, context.image_mean, context.image_std,
                               crop_scale=crop_scale)
        )

    def describe_views(self, context: BuildContext) -> str:
        return f"2 views of {context.image_size} px"

    def backbone_fields(self, context: BuildContext) -> dict:
        """Config fields that depend on the backbone family (e.g. MoCo v3's ViT and ResNet heads)."""
        return {}

    def model_fields(self, context: BuildContext) -> dict:
        """Config fields of the model: backbone, size, backbone-family fields, small-image heads, then
        the user's overrides."""
        fields = {"backbone_config": context.backbone.nested(), "image_size": context.image_size}
        fields.update(self.backbone_fields(context))
        if context.image_size < SMALL_IMAGE_SIZE:
            fields.update(self.small_image_fields)
        fields.update(context.model_overrides)
        return fields

    def build_model(self, context: BuildContext):
        return self.model_class(self.config_class(**self.model_fields(context)))


@dataclass
class MomentumArguments:
    """Flags of a method with a momentum encoder."""

    base_momentum: float = field(
        default=0.996,
        metadata={"help": "EMA momentum of the momentum encoder at the first step; it follows a cosine to 1."},
    )


class MomentumRecipe(JointEmbeddingRecipe):
    """A joint-embedding recipe whose model has a momentum encoder (`update_momentum_encoder`)."""

    arguments_class = MomentumArguments

    def _momentum_arguments(self, method_arguments) -> MomentumArguments:
        return method_arguments if method_arguments is not None else self.method_arguments_defaults()

    def build_model(self, context: BuildContext):
        base_momentum = self._momentum_arguments(context.method_arguments).base_momentum
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"--base_momentum must be in [0, 1], got {base_momentum}")
        return super().build_model(context)

    def schedules(self, context: ScheduleContext) -> dict[str, torch.Tensor]:
        """Learning rate and weight decay, plus ``ema_momentum``: cosine from ``--base_momentum`` to 1."""
        schedules = super().schedules(context)
        base_momentum = self._momentum_arguments(context.method_arguments).base_momentum
        schedules["ema_momentum"] = momentum_schedule(base_momentum, context.max_steps)
        return schedules

    def after_optimizer_step(self, model, step: StepContext) -> None:
        """Move the momentum encoder towards the online network with this step's momentum."""
        model.update_momentum_encoder(step.values["ema_momentum"])


__all__ = [
    "MOCO_V3_VIT_ADAMW",
    "SMALL_IMAGE_CROP_SCALE",
    "JointEmbeddingRecipe",
    "MomentumArguments",
    "MomentumRecipe",
]
