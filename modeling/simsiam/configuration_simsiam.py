"""Configuration of SimSiam pre-training on any backbone.

SimSiam: Chen & He 2020, "Exploring Simple Siamese Representation Learning", arXiv:2011.10566,
section 3 / appendix: projector of 3 layers, 2048 wide, batch norm on every layer including the
output (no ReLU there); predictor 2048 -> 512 (bottleneck) -> 2048, batch norm on its hidden layer
only (facebookresearch/simsiam simsiam/builder.py, ``--dim 2048 --pred-dim 512``).
"""

from __future__ import annotations

from hf_ssl.joint_embedding import JointEmbeddingWithPredictorConfig


class SimSiamConfig(JointEmbeddingWithPredictorConfig):
    r"""Configuration of [`BackboneForSimSiam`].

    Args:
        backbone_config, image_size, freeze_patch_embedding: see `JointEmbeddingConfig`.
        projection_hidden_size (`int`, defaults to 2048): the official code uses the backbone's width
            (2048 for ResNet-50).
        projection_dim (`int`, defaults to 2048): ``--dim``.
        projection_num_layers (`int`, defaults to 3), projection_output_batch_norm (`bool`, defaults
            to `True`), projection_bias (`bool`, defaults to `True`): as builder.py (its output layer's
            bias is frozen before the affine-free batch norm; here that layer has no bias).
        prediction_hidden_size (`int`, defaults to 512): ``--pred-dim``, the bottleneck.
        prediction_output_batch_norm (`bool`, defaults to `False`), prediction_bias (`bool`, defaults
            to `True`).
    """

    model_type = "hf-ssl-simsiam"

    projection_hidden_size: int = 2048
    projection_dim: int = 2048
    projection_num_layers: int = 3
    projection_output_batch_norm: bool = True
    projection_bias: bool = True
    prediction_hidden_size: int = 512
    prediction_output_batch_norm: bool = False
    prediction_bias: bool = True


__all__ = ["SimSiamConfig"]
