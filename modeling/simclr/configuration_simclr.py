"""Configuration of SimCLR pre-training on any backbone.

SimCLR: Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", arXiv:2002.05709. Head and loss defaults are the official code's
(google-research/simclr): projector hidden layer Linear -> BN -> ReLU, output Linear -> BN
(``model_util.projection_head`` / tf2 ``model.ProjectionHead``), ``--proj_out_dim 128``,
``--temperature 0.1``.
"""

from __future__ import annotations

from hf_ssl.joint_embedding import JointEmbeddingConfig


class SimCLRConfig(JointEmbeddingConfig):
    r"""Configuration of [`BackboneForSimCLR`].

    Args:
        backbone_config, image_size, freeze_patch_embedding: see `JointEmbeddingConfig`.
        projection_hidden_size (`int`, defaults to 2048): the paper's hidden width (ResNet-50; the
            official code sets it to the backbone's width, 2048 there).
        projection_dim (`int`, defaults to 128): ``--proj_out_dim``.
        projection_num_layers (`int`, defaults to 2): the paper's one-hidden-layer MLP (SimCLR v2's
            tf2 code defaults to 3 layers, ``--num_proj_layers 3``).
        projection_output_batch_norm (`bool`, defaults to `True`): the official code normalises the
            128-d output (batch norm without centring; here without affine parameters).
        projection_bias (`bool`, defaults to `True`): bias of layers not followed by batch norm.
        temperature (`float`, defaults to 0.1): NT-Xent tau, run.py ``--temperature`` and the
            ImageNet setting (the paper uses 0.5 for CIFAR-10).
    """

    model_type = "hf-ssl-simclr"

    projection_hidden_size: int = 2048
    projection_dim: int = 128
    projection_num_layers: int = 2
    projection_output_batch_norm: bool = True
    projection_bias: bool = True
    temperature: float = 0.1

    def check_fields(self) -> None:
        super().check_fields()
        self.require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")


__all__ = ["SimCLRConfig"]
