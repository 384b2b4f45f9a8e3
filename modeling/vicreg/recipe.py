"""VICReg recipe (Bardes, Ponce, LeCun 2021, arXiv:2105.04906): ``--method vicreg`` on any backbone.

Where every default comes from (paper section 4.1; facebookresearch/vicreg main_vicreg.py):

- Model (`hf_ssl.modeling.vicreg.VICRegConfig`): expander 8192-8192-8192 (``--mlp``), coefficients
  25 / 25 / 1 (``--sim-coeff``, ``--std-coeff``, ``--cov-coeff``), variance epsilon 1e-4.
- Augmentation: BYOL's, ``two_view_transform("byol")`` (augmentations.py ``TrainTransform``: bicubic
  crops 8-100 %, jitter 0.4 / 0.4 / 0.2 / 0.1 with p=0.8, grey-scale 0.2, blur 1.0 / 0.1, solarize
  0 / 0.2).
- Optimizer, published: LARS, learning rate 0.2 x B/256 (``--base-lr``), weight decay 1e-6, 10
  warm-up epochs of 1000, cosine to 0.001 of the peak, batch 2048.
- Optimizer, hf-ssl: AdamW with MoCo v3's published ViT settings (`MOCO_V3_VIT_ADAMW`: learning rate
  1.5e-4 x B/256, weight decay 0.1, betas (0.9, 0.999), 40/300 of the steps warm-up, cosine to 0, no
  clipping).
- Small images (< 128 px): expander 512-512-512 and 25-100 % crops; bundled digits run: the common bundled settings
  (`hf_ssl.training.arguments.BUNDLED_RUN_DEFAULTS`); tests/test_joint_embedding.py checks that
  150 steps beat random init in kNN.
"""

from __future__ import annotations

from hf_ssl.recipes.base import MethodCard, register_recipe
from hf_ssl.recipes.joint_embedding import JointEmbeddingRecipe

from . import BackboneForVICReg, VICRegConfig


class VICRegRecipe(JointEmbeddingRecipe):
    name = "vicreg"
    description = "VICReg (Bardes et al. 2021): invariance + variance + covariance terms on two views' embeddings"
    registrations = ((VICRegConfig, BackboneForVICReg, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="VICReg",
        description=(
            "VICReg (Bardes, Ponce, LeCun 2021, arXiv:2105.04906) pulls the embeddings of two augmented views "
            "together (invariance) while keeping every dimension's variance above a margin and decorrelating the "
            "dimensions (covariance), which prevents collapse without negatives or a momentum encoder."
        ),
        limitation="The three loss weights (25 / 25 / 1) were tuned on ImageNet with an 8192-wide expander.",
        tags=("vicreg", "joint-embedding"),
    )
    config_class = VICRegConfig
    model_class = BackboneForVICReg
    augmentation = "byol"
    small_image_fields = dict(projection_hidden_size=512, projection_dim=512)


VICREG = register_recipe(VICRegRecipe())

__all__ = ["VICREG", "VICRegRecipe"]
