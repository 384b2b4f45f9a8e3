"""SimCLR pre-training on any backbone (`BackboneForSimCLR`).

SimCLR: Chen et al. 2020, arXiv:2002.05709. Both views go through the backbone in one call and
through the projector together (2B rows, as the official code concatenates its views, so the
projector's batch norms normalise over both views); the loss is NT-Xent over the 2B projections,
negatives gathered from every process (`hf_ssl.losses.nt_xent_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ModelOutput

from hf_ssl.joint_embedding import JointEmbeddingModel
from hf_ssl.losses import nt_xent_loss

from .configuration_simclr import SimCLRConfig


@dataclass
class SimCLROutput(ModelOutput):
    """Output of [`BackboneForSimCLR`].

    Args:
        loss: NT-Xent, mean over the 2B anchors.
        embedding_std, embedding_rank: collapse monitors of the backbone features (`hf_ssl.monitoring`).
        projections: ``(2, B, projection_dim)`` projector outputs, view-major.
    """

    loss: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None
    projections: torch.FloatTensor | None = None


class BackboneForSimCLR(JointEmbeddingModel):
    """SimCLR: backbone + projector, NT-Xent between the two views of each image.

    Attributes:
        backbone: `hf_ssl.backbones.VisionBackbone` (``backbone.model`` is what `export_backbone` writes).
        projector: `hf_ssl.heads.ProjectionHead`.
    """

    config_class = SimCLRConfig

    def __init__(self, config: SimCLRConfig):
        super().__init__(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> SimCLROutput:
        """Args:
        pixel_values: ``(B, 2, C, H, W)``, two augmented views of each image (B >= 2).
        """
        features = self.encode(pixel_values)  # (2, B, D)
        projections = self.projector(features.flatten(0, 1)).view(2, features.shape[1], -1)  # (2, B, E)
        loss = nt_xent_loss(projections[0], projections[1], temperature=self.config.temperature)
        return SimCLROutput(loss=loss, **self.collapse_metrics(features), projections=projections)


__all__ = ["BackboneForSimCLR", "SimCLROutput"]
