"""SimCLR recipe (Chen et al. 2020, arXiv:2002.05709): ``--method simclr`` on any backbone.

Where every default comes from:

- Model (`hf_ssl.modeling.simclr.SimCLRConfig`): projector 2048 -> 128, hidden and output batch
  norm (paper section 2 and google-research/simclr ``projection_head``), NT-Xent temperature 0.1
  (run.py ``--temperature``, the ImageNet setting; the paper's CIFAR-10 runs use 0.5).
- Augmentation: SimCLR's own pipeline, ``two_view_transform("simclr")`` (colour jitter strength
  1.0 = 0.8 / 0.8 / 0.8 / 0.2 with p=0.8, grey-scale 0.2, blur p=0.5 on each view, crops 8-100 %,
  no solarize; tf2/data_util.py).
- Optimizer, published: LARS (momentum 0.9, trust coefficient 0.001), learning rate 0.3 x B/256
  (``--learning_rate_scaling linear``; the paper's appendix B.1 recommends 0.075 x sqrt(B) for
  small batches), weight decay 1e-6, 10 warm-up epochs of 100, cosine to 0, batch 4096 (run.py,
  tf2/model.py ``build_optimizer``).
- Optimizer, hf-ssl: AdamW with MoCo v3's published ViT settings (`MOCO_V3_VIT_ADAMW`: learning rate
  1.5e-4 x B/256, weight decay 0.1, betas (0.9, 0.999), 40/300 of the steps warm-up, cosine to 0,
  no clipping). The MoCo v3 paper (section 6) trains SimCLR on ViTs with AdamW too, with its own
  tuned values that hf-ssl does not reproduce.
- Small images (< 128 px): projector 512 -> 128 and 50-100 % crops, chosen on the bundled scenes
  against 25-100 % and 70-100 % crops and temperature 0.2 (docs/small-image-defaults.md). Bundled
  run: the common bundled settings
  (`hf_ssl.training.arguments.BUNDLED_RUN_DEFAULTS`); tests/test_joint_embedding.py checks that
  150 steps beat random init in kNN.
"""

from __future__ import annotations

from hf_ssl.recipes.base import MethodCard, register_recipe
from hf_ssl.recipes.joint_embedding import JointEmbeddingRecipe

from . import BackboneForSimCLR, SimCLRConfig


class SimCLRRecipe(JointEmbeddingRecipe):
    name = "simclr"
    description = "SimCLR (Chen et al. 2020): NT-Xent between two augmented views, negatives from the batch"
    registrations = ((SimCLRConfig, BackboneForSimCLR, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="SimCLR",
        description=(
            "SimCLR (Chen et al. 2020, arXiv:2002.05709) pulls together the projections of two augmented views "
            "of each image and pushes apart those of the other images of the batch (NT-Xent loss)."
        ),
        limitation="Contrastive learning needs many negatives: quality drops with small batches.",
        tags=("simclr", "contrastive-learning", "joint-embedding"),
    )
    config_class = SimCLRConfig
    model_class = BackboneForSimCLR
    augmentation = "simclr"
    small_image_fields = dict(projection_hidden_size=512, projection_dim=128)
    small_image_crop_scale = (0.5, 1.0)


SIMCLR = register_recipe(SimCLRRecipe())

__all__ = ["SIMCLR", "SimCLRRecipe"]
