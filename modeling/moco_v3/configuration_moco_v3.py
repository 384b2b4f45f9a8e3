"""Configuration of MoCo v3 pre-training on any backbone.

MoCo v3: Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers",
arXiv:2104.02057. Defaults are the official ViT setup (facebookresearch/moco-v3 moco/builder.py
``MoCo_ViT._build_projector_and_predictor_mlps`` and ``_build_mlp``; CONFIG.md ViT commands):
3-layer projector and 2-layer predictor, hidden 4096 (``--moco-mlp-dim``), output 256
(``--moco-dim``), every layer with batch norm, no biases, temperature 0.2 (``--moco-t=.2``), frozen
random patch projection (``--stop-grad-conv1``). The ResNet setup (``MoCo_ResNet``) has a 2-layer
projector, no batch norm after the predictor and temperature 1.0 (main_moco.py default):
`MOCO_V3_RESNET_FIELDS`.
"""

from __future__ import annotations

from hf_ssl.joint_embedding import JointEmbeddingWithPredictorConfig

# The official ResNet setup: MoCo_ResNet's heads and main_moco.py's default --moco-t.
MOCO_V3_RESNET_FIELDS = dict(projection_num_layers=2, prediction_output_batch_norm=False, temperature=1.0,
                             freeze_patch_embedding=False)


class MoCoV3Config(JointEmbeddingWithPredictorConfig):
    r"""Configuration of [`BackboneForMoCoV3`].

    Args:
        backbone_config, image_size: see `JointEmbeddingConfig`.
        projection_hidden_size (`int`, defaults to 4096), projection_dim (`int`, defaults to 256),
        projection_num_layers (`int`, defaults to 3; ResNet: 2): the projector, also the momentum
            encoder's.
        projection_output_batch_norm (`bool`, defaults to `True`), projection_bias (`bool`, defaults
            to `False`): ``_build_mlp`` puts batch norm (affine-free at the output) after every layer
            and no biases.
        prediction_hidden_size (`int`, defaults to 4096): the predictor's hidden width.
        prediction_output_batch_norm (`bool`, defaults to `True`; ResNet: `False`), prediction_bias
            (`bool`, defaults to `False`).
        temperature (`float`, defaults to 0.2; ResNet: 1.0): tau of the contrastive loss.
        freeze_patch_embedding (`bool`, defaults to `True`): ``--stop-grad-conv1`` for ViTs (the
            recipe turns it off for backbones without a patch embedding).
    """

    model_type = "hf-ssl-moco_v3"

    projection_hidden_size: int = 4096
    projection_dim: int = 256
    projection_num_layers: int = 3
    projection_output_batch_norm: bool = True
    projection_bias: bool = False
    prediction_hidden_size: int = 4096
    prediction_output_batch_norm: bool = True
    prediction_bias: bool = False
    temperature: float = 0.2
    freeze_patch_embedding: bool = True

    def check_fields(self) -> None:
        super().check_fields()
        self.require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")


__all__ = ["MOCO_V3_RESNET_FIELDS", "MoCoV3Config"]
