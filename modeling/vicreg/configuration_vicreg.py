"""Configuration of VICReg pre-training on any backbone.

VICReg: Bardes, Ponce, LeCun 2021, "Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", arXiv:2105.04906, section 4.1: expander of three linear layers of 8192
units, batch norm + ReLU after the first two (facebookresearch/vicreg main_vicreg.py ``Projector``,
``--mlp 8192-8192-8192``); coefficients 25 / 25 / 1 (``--sim-coeff``, ``--std-coeff``, ``--cov-coeff``).
"""

from __future__ import annotations

from hf_ssl.joint_embedding import JointEmbeddingConfig


class VICRegConfig(JointEmbeddingConfig):
    r"""Configuration of [`BackboneForVICReg`].

    Args:
        backbone_config, image_size, freeze_patch_embedding: see `JointEmbeddingConfig`.
        projection_hidden_size (`int`, defaults to 8192), projection_dim (`int`, defaults to 8192),
        projection_num_layers (`int`, defaults to 3), projection_output_batch_norm (`bool`, defaults
            to `False`), projection_bias (`bool`, defaults to `False`): the expander (the official
            hidden layers have biases, which their batch norms cancel; the last has none).
        invariance_weight (`float`, defaults to 25.0): lambda. variance_weight (`float`, defaults to
            25.0): mu. covariance_weight (`float`, defaults to 1.0): nu.
    """

    model_type = "hf-ssl-vicreg"

    projection_hidden_size: int = 8192
    projection_dim: int = 8192
    projection_num_layers: int = 3
    projection_output_batch_norm: bool = False
    projection_bias: bool = False
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0

    def check_fields(self) -> None:
        super().check_fields()
        for name in ("invariance_weight", "variance_weight", "covariance_weight"):
            self.require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")


__all__ = ["VICRegConfig"]
