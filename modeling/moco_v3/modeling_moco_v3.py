"""MoCo v3 pre-training on any backbone (`BackboneForMoCoV3`).

MoCo v3: Chen, Xie, He 2021, arXiv:2104.02057. The base encoder (backbone + projector) and the
predictor make queries, the momentum encoder (an EMA copy of backbone + projector, no gradient)
makes keys; the loss is the symmetrised InfoNCE of facebookresearch/moco-v3 moco/builder.py
``MoCo.forward``: ctr(q1, k2) + ctr(q2, k1), keys gathered from every process
(`hf_ssl.losses.moco_v3_loss`). The official code updates the momentum encoder at the start of
each forward with the step's momentum; here the recipe updates it after each optimizer step,
which is the same sequence of weights. Both views share one backbone call per network; the heads
run per view, as the official code's separate calls do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ModelOutput

from hf_ssl.joint_embedding import MomentumJointEmbeddingModel
from hf_ssl.losses import moco_v3_loss

from .configuration_moco_v3 import MoCoV3Config


@dataclass
class MoCoV3Output(ModelOutput):
    """Output of [`BackboneForMoCoV3`].

    Args:
        loss: ``ctr(q1, k2) + ctr(q2, k1)``, each scaled by 2 tau as in the official code.
        embedding_std, embedding_rank: collapse monitors of the base encoder's backbone features.
        queries: ``(2, B, projection_dim)`` predictor outputs, view-major.
        momentum_keys: ``(2, B, projection_dim)`` momentum-encoder projections, view-major (no gradient).
    """

    loss: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None
    queries: torch.FloatTensor | None = None
    momentum_keys: torch.FloatTensor | None = None


class BackboneForMoCoV3(MomentumJointEmbeddingModel):
    """MoCo v3: base encoder + predictor against a momentum encoder.

    Attributes:
        backbone, projector: the base encoder (``backbone.model`` is what `export_backbone` writes).
        predictor: `hf_ssl.heads.PredictionHead`, base encoder only.
        momentum_backbone, momentum_projector: the momentum encoder (EMA, no gradient).
    """

    config_class = MoCoV3Config

    def __init__(self, config: MoCoV3Config):
        super().__init__(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> MoCoV3Output:
        """Args:
        pixel_values: ``(B, 2, C, H, W)``, two augmented views of each image (B >= 2).
        """
        features, queries, keys = self.predict_with_momentum(pixel_values)  # (2, B, D), (2, B, E), (2, B, E)
        loss = moco_v3_loss(queries[0], queries[1], keys[0], keys[1], temperature=self.config.temperature)
        return MoCoV3Output(loss=loss, **self.collapse_metrics(features), queries=queries, momentum_keys=keys)


__all__ = ["BackboneForMoCoV3", "MoCoV3Output"]
