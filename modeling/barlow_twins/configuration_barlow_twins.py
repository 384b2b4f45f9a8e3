"""Configuration of Barlow Twins pre-training on any backbone.

Barlow Twins: Zbontar, Jing, Misra, LeCun, Deny 2021, "Self-Supervised Learning via Redundancy
Reduction", arXiv:2103.03230, section 2 / 4: projector of three linear layers of 8192 units, batch
norm + ReLU after the first two, no biases (facebookresearch/barlowtwins main.py
``--projector 8192-8192-8192``); lambda = 5e-3 (paper; main.py's ``--lambd`` default is 0.0051).
"""

from __future__ import annotations

from hf_ssl.joint_embedding import JointEmbeddingConfig


class BarlowTwinsConfig(JointEmbeddingConfig):
    r"""Configuration of [`BackboneForBarlowTwins`].

    Args:
        backbone_config, image_size, freeze_patch_embedding: see `JointEmbeddingConfig`.
        projection_hidden_size (`int`, defaults to 8192), projection_dim (`int`, defaults to 8192),
        projection_num_layers (`int`, defaults to 3), projection_output_batch_norm (`bool`, defaults
            to `False`: the loss batch-normalises), projection_bias (`bool`, defaults to `False`).
        redundancy_weight (`float`, defaults to 5e-3): lambda, the weight of the off-diagonal term.
    """

    model_type = "hf-ssl-barlow_twins"

    projection_hidden_size: int = 8192
    projection_dim: int = 8192
    projection_num_layers: int = 3
    projection_output_batch_norm: bool = False
    projection_bias: bool = False
    redundancy_weight: float = 5e-3

    def check_fields(self) -> None:
        super().check_fields()
        self.require(self.redundancy_weight >= 0, f"redundancy_weight must be >= 0, got {self.redundancy_weight}")


__all__ = ["BarlowTwinsConfig"]
