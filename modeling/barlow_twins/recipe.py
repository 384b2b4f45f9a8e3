"""Barlow Twins recipe (Zbontar et al. 2021, arXiv:2103.03230): ``--method barlow_twins`` on any backbone.

Where every default comes from (paper section 4; facebookresearch/barlowtwins main.py):

- Model (`hf_ssl.modeling.barlow_twins.BarlowTwinsConfig`): projector 8192-8192-8192 without biases
  (``--projector 8192-8192-8192``), lambda 5e-3 (paper; main.py's ``--lambd`` is 0.0051).
- Augmentation: BYOL's, ``two_view_transform("byol")`` (main.py ``Transform``: bicubic crops
  8-100 %, jitter 0.4 / 0.4 / 0.2 / 0.1 with p=0.8, grey-scale 0.2, blur 1.0 / 0.1, solarize 0 / 0.2).
- Optimizer, published: LARS, learning rate 0.2 x B/256 for weights and 0.0048 x B/256 for biases
  and batch norm (``--learning-rate-weights``, ``--learning-rate-biases``), weight decay 1.5e-6,
  10 warm-up epochs of 1000, cosine to 0.001 of the peak, batch 2048.
- Optimizer, hf-ssl: AdamW with MoCo v3's published ViT settings (`MOCO_V3_VIT_ADAMW`: learning rate
  1.5e-4 x B/256, weight decay 0.1, betas (0.9, 0.999), 40/300 of the steps warm-up, cosine to 0, no
  clipping).
- Small images (< 128 px): projector 512-512-512 and 25-100 % crops; bundled digits run: the common bundled settings
  (`hf_ssl.training.arguments.BUNDLED_RUN_DEFAULTS`); tests/test_joint_embedding.py checks that
  300 steps beat random init in kNN (docs/small-image-defaults.md).
"""

from __future__ import annotations

from hf_ssl.recipes.base import MethodCard, register_recipe
from hf_ssl.recipes.joint_embedding import JointEmbeddingRecipe

from . import BackboneForBarlowTwins, BarlowTwinsConfig


class BarlowTwinsRecipe(JointEmbeddingRecipe):
    name = "barlow_twins"
    description = "Barlow Twins (Zbontar et al. 2021): cross-correlation of the two views' embeddings -> identity"
    registrations = ((BarlowTwinsConfig, BackboneForBarlowTwins, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="Barlow Twins",
        description=(
            "Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230) makes the cross-correlation matrix between the "
            "batch-normalised embeddings of two augmented views close to the identity: invariant features "
            "(diagonal) with little redundancy between dimensions (off-diagonal)."
        ),
        limitation="The objective favours very wide projectors (8192 in the paper), which cost memory.",
        tags=("barlow-twins", "joint-embedding"),
    )
    config_class = BarlowTwinsConfig
    model_class = BackboneForBarlowTwins
    augmentation = "byol"
    small_image_fields = dict(projection_hidden_size=512, projection_dim=512)


BARLOW_TWINS = register_recipe(BarlowTwinsRecipe())

__all__ = ["BARLOW_TWINS", "BarlowTwinsRecipe"]
