"""SimSiam pre-training on any backbone (`BackboneForSimSiam`).

SimSiam: Chen & He 2020, arXiv:2011.10566. One network (backbone + projector) on both views, a
predictor on top; loss ``1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1))`` with D the negative
cosine (`hf_ssl.losses.simsiam_loss`, which applies the stop-gradient). No momentum encoder and no
negatives. Both views share one backbone call; projector and predictor run per view, as the
official code's separate calls do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ModelOutput

from hf_ssl.joint_embedding import JointEmbeddingModel, build_predictor, per_view
from hf_ssl.losses import simsiam_loss

from .configuration_simsiam import SimSiamConfig


@dataclass
class SimSiamOutput(ModelOutput):
    """Output of [`BackboneForSimSiam`].

    Args:
        loss: symmetrised negative cosine, in [-1, 1].
        embedding_std, embedding_rank: collapse monitors of the backbone features.
        projections: ``(2, B, projection_dim)`` projector outputs z (the stop-gradient targets), view-major.
        predictions: ``(2, B, projection_dim)`` predictor outputs p, view-major.
    """

    loss: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None
    projections: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None


class BackboneForSimSiam(JointEmbeddingModel):
    """SimSiam: backbone + projector + predictor, stop-gradient on the projections.

    Attributes:
        backbone, projector: the shared encoder (``backbone.model`` is what `export_backbone` writes).
        predictor: `hf_ssl.heads.PredictionHead` (a bottleneck).
    """

    config_class = SimSiamConfig

    def __init__(self, config: SimSiamConfig):
        super().__init__(config)
        self.predictor = build_predictor(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> SimSiamOutput:
        """Args:
        pixel_values: ``(B, 2, C, H, W)``, two augmented views of each image (B >= 2).
        """
        features = self.encode(pixel_values)  # (2, B, D)
        projections = per_view(self.projector, features)  # (2, B, E)
        predictions = per_view(self.predictor, projections)  # (2, B, E)
        loss = simsiam_loss(predictions[0], predictions[1], projections[0], projections[1])
        return SimSiamOutput(loss=loss, **self.collapse_metrics(features), projections=projections,
                             predictions=predictions)


__all__ = ["BackboneForSimSiam", "SimSiamOutput"]
