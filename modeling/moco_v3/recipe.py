"""MoCo v3 recipe (Chen, Xie, He 2021, arXiv:2104.02057): ``--method moco_v3`` on any backbone.

Where every default comes from (facebookresearch/moco-v3):

- Model (`hf_ssl.modeling.moco_v3.MoCoV3Config`), vision transformers (a patch embedding and
  attention: ViT, DeiT, Swin, DINOv2, timm ViTs): ``MoCo_ViT`` heads (3-layer projector, predictor with output batch norm, 4096 / 256,
  no biases), temperature 0.2 and the frozen random patch projection, CONFIG.md ``--moco-t=.2
  --stop-grad-conv1``. Other backbones (CNNs, ConvNeXt included): ``MoCo_ResNet`` heads (2-layer projector, no output
  batch norm on the predictor) and temperature 1.0, main_moco.py's default ``--moco-t``
  (`MOCO_V3_RESNET_FIELDS`). The official ViTs use fixed 2-D sin-cos position embeddings; hf-ssl
  keeps the backbone's own (learned for transformers ViTs).
- Momentum: ``--base_momentum 0.99`` (``--moco-m``) rising to 1 by a half cosine over training
  (``--moco-m-cos``, ``adjust_moco_momentum``), applied after every optimizer step.
- Augmentation: BYOL's, ``two_view_transform("byol")``, crops 8-100 % (``--crop-min`` 0.08; the
  ResNet-50 commands of CONFIG.md use 0.2).
- Optimizer, published for ViTs and used here: AdamW, learning rate 1.5e-4 x B/256, weight decay
  0.1, 40 warm-up epochs of 300, cosine to 0, batch 4096, no clipping (`MOCO_V3_VIT_ADAMW`). hf-ssl
  exempts biases and norms from weight decay, the official code decays every parameter. For
  ResNet-50 the official recipe is LARS, learning rate 0.6 x B/256 (100 epochs; 0.3 for 300 and
  1000), weight decay 1e-6 (1.5e-6 for 1000 epochs); hf-ssl uses the AdamW settings for every backbone.
- Small images (< 128 px): heads 512 -> 128 and 25-100 % crops; bundled digits run: the common bundled settings
  (`hf_ssl.training.arguments.BUNDLED_RUN_DEFAULTS`); tests/test_joint_embedding.py checks that
  150 steps beat random init in kNN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_ssl.joint_embedding import is_vision_transformer
from hf_ssl.recipes.base import BuildContext, MethodCard, register_recipe
from hf_ssl.recipes.joint_embedding import MomentumArguments, MomentumRecipe

from . import MOCO_V3_RESNET_FIELDS, BackboneForMoCoV3, MoCoV3Config


@dataclass
class MoCoV3Arguments(MomentumArguments):
    base_momentum: float = field(
        default=0.99,
        metadata={"help": "EMA momentum of the key encoder at the first step (--moco-m 0.99); a cosine takes it to 1."},
    )


class MoCoV3Recipe(MomentumRecipe):
    name = "moco_v3"
    description = "MoCo v3 (Chen, Xie, He 2021): queries vs momentum-encoder keys of the other view, InfoNCE"
    registrations = ((MoCoV3Config, BackboneForMoCoV3, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="MoCo v3",
        description=(
            "MoCo v3 (Chen, Xie, He 2021, arXiv:2104.02057) predicts, for each view, the momentum encoder's key "
            "of the other view against the keys of every other image of the batch (symmetrised InfoNCE); the "
            "momentum encoder is an exponential moving average of the backbone and projector."
        ),
        limitation="Contrastive learning needs many negatives: quality drops with small batches.",
        tags=("moco-v3", "contrastive-learning", "joint-embedding"),
    )
    arguments_class = MoCoV3Arguments
    config_class = MoCoV3Config
    model_class = BackboneForMoCoV3
    augmentation = "byol"
    small_image_fields = dict(projection_hidden_size=512, projection_dim=128, prediction_hidden_size=512)

    def backbone_fields(self, context: BuildContext) -> dict:
        """MoCo v3's ViT setup for vision transformers, its ResNet setup for every other backbone."""
        return {} if is_vision_transformer(context.backbone.nested()) else dict(MOCO_V3_RESNET_FIELDS)


MOCO_V3 = register_recipe(MoCoV3Recipe())

__all__ = ["MOCO_V3", "MoCoV3Arguments", "MoCoV3Recipe"]
