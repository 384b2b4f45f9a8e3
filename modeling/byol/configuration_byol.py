"""Configuration of BYOL pre-training on any backbone.

BYOL: Grill et al. 2020, "Bootstrap Your Own Latent", arXiv:2006.07733, section 3.3: projector
and predictor are MLPs Linear(4096) -> BN -> ReLU -> Linear(256) (deepmind-research byol
``networks.MLP`` with ``hidden_size 4096``, ``projection_size 256``); the target network is an EMA
of backbone + projector.
"""

from __future__ import annotations

from hf_ssl.joint_embedding import JointEmbeddingWithPredictorConfig


class BYOLConfig(JointEmbeddingWithPredictorConfig):
    r"""Configuration of [`BackboneForBYOL`].

    Args:
        backbone_config, image_size, freeze_patch_embedding: see `JointEmbeddingConfig`.
        projection_hidden_size (`int`, defaults to 4096), projection_dim (`int`, defaults to 256),
        projection_num_layers (`int`, defaults to 2), projection_output_batch_norm (`bool`, defaults
            to `False`), projection_bias (`bool`, defaults to `True`): the paper's projector.
        prediction_hidden_size (`int`, defaults to 4096), prediction_output_batch_norm (`bool`,
            defaults to `False`), prediction_bias (`bool`, defaults to `True`): the paper's predictor.
    """

    model_type = "hf-ssl-byol"

    projection_hidden_size: int = 4096
    projection_dim: int = 256
    projection_num_layers: int = 2
    projection_output_batch_norm: bool = False
    projection_bias: bool = True
    prediction_hidden_size: int = 4096
    prediction_output_batch_norm: bool = False
    prediction_bias: bool = True


__all__ = ["BYOLConfig"]
