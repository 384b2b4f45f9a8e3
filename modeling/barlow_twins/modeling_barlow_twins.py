"""Barlow Twins pre-training on any backbone (`BackboneForBarlowTwins`).

Barlow Twins: Zbontar et al. 2021, arXiv:2103.03230. The cross-correlation matrix of the two
views' batch-normalised projections is pulled to the identity: ``sum_i (1 - C_ii)^2 + lambda
sum_{i != j} C_ij^2`` over the global batch (`hf_ssl.losses.barlow_twins_loss_terms`). Both views share
one backbone call; the projector runs per view, as the official code's separate calls do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ModelOutput

from hf_ssl.joint_embedding import JointEmbeddingModel, per_view
from hf_ssl.losses import barlow_twins_loss_terms

from .configuration_barlow_twins import BarlowTwinsConfig


@dataclass
class BarlowTwinsOutput(ModelOutput):
    """Output of [`BackboneForBarlowTwins`].

    Args:
        loss: ``invariance_loss + redundancy_weight * redundancy_loss``.
        invariance_loss: on-diagonal term ``sum_i (1 - C_ii)^2`` (no gradient; for logging).
        redundancy_loss: off-diagonal term ``sum_{i != j} C_ij^2``, unweighted (no gradient; for logging).
        embedding_std, embedding_rank: collapse monitors of the backbone features.
        projections: ``(2, B, projection_dim)`` projector outputs, view-major.
    """

    loss: torch.FloatTensor | None = None
    invariance_loss: torch.FloatTensor | None = None
    redundancy_loss: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None
    projections: torch.FloatTensor | None = None


class BackboneForBarlowTwins(JointEmbeddingModel):
    """Barlow Twins: backbone + projector, cross-correlation to the identity.

    Attributes:
        backbone, projector: the shared encoder (``backbone.model`` is what `export_backbone` writes).
    """

    config_class = BarlowTwinsConfig

    def __init__(self, config: BarlowTwinsConfig):
        super().__init__(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> BarlowTwinsOutput:
        """Args:
        pixel_values: ``(B, 2, C, H, W)``, two augmented views of each image (B >= 2).
        """
        features = self.encode(pixel_values)  # (2, B, D)
        projections = per_view(self.projector, features)  # (2, B, E)
        terms = barlow_twins_loss_terms(projections[0], projections[1], redundancy_weight=self.config.redundancy_weight)
        return BarlowTwinsOutput(loss=terms.loss, invariance_loss=terms.on_diagonal.detach(),
                                 redundancy_loss=terms.off_diagonal.detach(),
                                 **self.collapse_metrics(features), projections=projections)


__all__ = ["BackboneForBarlowTwins", "BarlowTwinsOutput"]
