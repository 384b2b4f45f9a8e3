"""BYOL pre-training on any backbone (`BackboneForBYOL`).

BYOL: Grill et al. 2020, arXiv:2006.07733. The online network (backbone + projector + predictor)
predicts the target network's projection of the other view; the target network is an EMA copy of
backbone + projector with no gradient. Loss: the symmetrised normalised MSE of the paper's Eq. 2
(`hf_ssl.losses.byol_loss`). Each network encodes both views in one backbone call; the heads run
per view, as the official code's separate calls do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ModelOutput

from hf_ssl.joint_embedding import MomentumJointEmbeddingModel
from hf_ssl.losses import byol_loss

from .configuration_byol import BYOLConfig


@dataclass
class BYOLOutput(ModelOutput):
    """Output of [`BackboneForBYOL`].

    Args:
        loss: sum over both directions of ``2 - 2 cos(prediction, target of the other view)``, batch mean.
        embedding_std, embedding_rank: collapse monitors of the online backbone features.
        predictions: ``(2, B, projection_dim)`` online predictor outputs, view-major.
        targets: ``(2, B, projection_dim)`` target-network projections, view-major (no gradient).
    """

    loss: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    targets: torch.FloatTensor | None = None


class BackboneForBYOL(MomentumJointEmbeddingModel):
    """BYOL: online network + predictor against an EMA target network.

    Attributes:
        backbone, projector: the online network (``backbone.model`` is what `export_backbone` writes).
        predictor: `hf_ssl.heads.PredictionHead`, online network only.
        momentum_backbone, momentum_projector: the target network (EMA, no gradient).
    """

    config_class = BYOLConfig

    def __init__(self, config: BYOLConfig):
        super().__init__(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> BYOLOutput:
        """Args:
        pixel_values: ``(B, 2, C, H, W)``, two augmented views of each image (B >= 2).
        """
        features, predictions, targets = self.predict_with_momentum(pixel_values)  # (2, B, D), (2, B, E), (2, B, E)
        loss = byol_loss(predictions[0], predictions[1], targets[0], targets[1])
        return BYOLOutput(loss=loss, **self.collapse_metrics(features), predictions=predictions, targets=targets)


__all__ = ["BYOLOutput", "BackboneForBYOL"]
