"""SimSiam recipe (Chen & He 2020, arXiv:2011.10566): ``--method simsiam`` on any backbone.

Where every default comes from (paper section 4 and appendix A; facebookresearch/simsiam):

- Model (`hf_ssl.modeling.simsiam.SimSiamConfig`): 3-layer projector 2048 -> 2048 with batch norm on
  every layer, predictor 2048 -> 512 -> 2048 (builder.py, ``--dim 2048 --pred-dim 512``),
  stop-gradient on the projections (inside `hf_ssl.losses.simsiam_loss`).
- Augmentation: MoCo v2's, ``two_view_transform("simsiam")`` (main_simsiam.py): crops 20-100 %,
  jitter 0.4 / 0.4 / 0.4 / 0.1 with p=0.8, grey-scale 0.2, blur p=0.5, the same for both views.
- Optimizer, published: SGD momentum 0.9, learning rate 0.05 x B/256, weight decay 1e-4, cosine to
  0 without warm-up, batch 512, 100 epochs; the predictor keeps the initial learning rate
  (``--fix-pred-lr``, README).
- Optimizer, hf-ssl: AdamW with MoCo v3's published ViT settings (`MOCO_V3_VIT_ADAMW`: learning rate
  1.5e-4 x B/256, weight decay 0.1, betas (0.9, 0.999), 40/300 of the steps warm-up, cosine to 0, no
  clipping). The predictor decays like every other parameter: hf-ssl's loop gives every parameter
  group one schedule (a group's ``lr_scale`` is a constant factor), so ``--fix-pred-lr`` has no
  equivalent.
- Small images (< 128 px): projector 512 -> 512, predictor bottleneck 128, 25-100 % crops; bundled digits run:
  the common bundled settings (`hf_ssl.training.arguments.BUNDLED_RUN_DEFAULTS`), checked by
  tests/test_joint_embedding.py to beat random init in kNN.
"""

from __future__ import annotations

from hf_ssl.recipes.base import MethodCard, register_recipe
from hf_ssl.recipes.joint_embedding import JointEmbeddingRecipe

from . import BackboneForSimSiam, SimSiamConfig


class SimSiamRecipe(JointEmbeddingRecipe):
    name = "simsiam"
    description = "SimSiam (Chen & He 2020): predict the other view's projection, stop-gradient, no negatives"
    registrations = ((SimSiamConfig, BackboneForSimSiam, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="SimSiam",
        description=(
            "SimSiam (Chen & He 2020, arXiv:2011.10566) trains one network to predict its own projection of another "
            "augmented view of the same image; a stop-gradient on that projection prevents collapse without "
            "negative pairs or a momentum encoder."
        ),
        limitation="Collapse is prevented by the stop-gradient and the predictor only: watch embedding_std.",
        tags=("simsiam", "joint-embedding"),
    )
    config_class = SimSiamConfig
    model_class = BackboneForSimSiam
    augmentation = "simsiam"
    small_image_fields = dict(projection_hidden_size=512, projection_dim=512, prediction_hidden_size=128)


SIMSIAM = register_recipe(SimSiamRecipe())

__all__ = ["SIMSIAM", "SimSiamRecipe"]
