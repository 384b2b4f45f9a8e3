"""BYOL recipe (Grill et al. 2020, arXiv:2006.07733): ``--method byol`` on any backbone.

Where every default comes from (paper section 3.3 and appendix C; deepmind-research byol/):

- Model (`hf_ssl.modeling.byol.BYOLConfig`): projector and predictor 4096 -> 256
  (Linear -> BN -> ReLU -> Linear), target network = EMA of backbone + projector.
- Momentum: ``--base_momentum 0.996`` rising to 1 by ``1 - (1 - 0.996)(cos(pi k / K) + 1) / 2``
  (section 3.3), applied after every optimizer step.
- Augmentation: ``two_view_transform("byol")`` (Table 6; byol/utils/augmentations.py): jitter
  0.4 / 0.4 / 0.2 / 0.1 with p=0.8, grey-scale 0.2, blur p=1.0 on view 1 and 0.1 on view 2,
  solarize p=0.2 on view 2 only, crops 8-100 %.
- Optimizer, published: LARS (trust coefficient 1e-3, biases and batch norm excluded from weight
  decay and adaptation), learning rate 0.2 x B/256, weight decay 1.5e-6, 10 warm-up epochs of 1000,
  cosine to 0, batch 4096.
- Optimizer, hf-ssl: AdamW with MoCo v3's published ViT settings (`MOCO_V3_VIT_ADAMW`: learning rate
  1.5e-4 x B/256, weight decay 0.1, betas (0.9, 0.999), 40/300 of the steps warm-up, cosine to 0,
  no clipping). The MoCo v3 paper (section 6) trains BYOL on ViTs with AdamW too, with its own
  tuned values that hf-ssl does not reproduce.
- Small images (< 128 px): projector and predictor 512 -> 128 and 25-100 % crops; bundled digits run:
  the common bundled settings (`hf_ssl.training.arguments.BUNDLED_RUN_DEFAULTS`); BYOL needs 600
  steps there to beat random init in kNN (docs/small-image-defaults.md), checked by
  tests/test_joint_embedding.py.
"""

from __future__ import annotations

from hf_ssl.recipes.base import MethodCard, register_recipe
from hf_ssl.recipes.joint_embedding import MomentumRecipe

from . import BackboneForBYOL, BYOLConfig


class BYOLRecipe(MomentumRecipe):
    name = "byol"
    description = "BYOL (Grill et al. 2020): predict an EMA target network's projection of the other view"
    registrations = ((BYOLConfig, BackboneForBYOL, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="BYOL",
        description=(
            "BYOL (Grill et al. 2020, arXiv:2006.07733) trains an online network to predict the projection that a "
            "slowly moving average of itself (the target network) gives to another augmented view of the same "
            "image, without negative pairs."
        ),
        limitation="Without negatives, BYOL relies on the predictor and the EMA target to avoid collapse.",
        tags=("byol", "joint-embedding"),
    )
    config_class = BYOLConfig
    model_class = BackboneForBYOL
    augmentation = "byol"
    small_image_fields = dict(projection_hidden_size=512, projection_dim=128, prediction_hidden_size=512)


BYOL = register_recipe(BYOLRecipe())

__all__ = ["BYOL", "BYOLRecipe"]
