"""VICReg pre-training on any backbone (`BackboneForVICReg`).

VICReg: Bardes et al. 2021, arXiv:2105.04906. Invariance (MSE between the two views' expander
outputs) + variance (hinge keeping every dimension's std >= 1) + covariance (off-diagonal
covariances to 0), weighted 25 / 25 / 1 over the global batch (`hf_ssl.losses.vicreg_loss`). Both
views share one backbone call; the expander runs per view, as the official code's separate calls do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ModelOutput

from hf_ssl.joint_embedding import JointEmbeddingModel, per_view
from hf_ssl.losses import vicreg_loss

from .configuration_vicreg import VICRegConfig


@dataclass
class VICRegOutput(ModelOutput):
    """Output of [`BackboneForVICReg`].

    Args:
        loss: ``invariance_weight * invariance_loss + variance_weight * variance_loss + covariance_weight * covariance_loss``.
        invariance_loss, variance_loss, covariance_loss: the three unweighted terms.
        embedding_std, embedding_rank: collapse monitors of the backbone features.
        projections: ``(2, B, projection_dim)`` expander outputs, view-major.
    """

    loss: torch.FloatTensor | None = None
    invariance_loss: torch.FloatTensor | None = None
    variance_loss: torch.FloatTensor | None = None
    covariance_loss: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None
    projections: torch.FloatTensor | None = None


class BackboneForVICReg(JointEmbeddingModel):
    """VICReg: backbone + expander, variance-invariance-covariance regularisation.

    Attributes:
        backbone, projector: the shared encoder and expander (``backbone.model`` is what `export_backbone` writes).
    """

    config_class = VICRegConfig

    def __init__(self, config: VICRegConfig):
        super().__init__(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> VICRegOutput:
        """Args:
        pixel_values: ``(B, 2, C, H, W)``, two augmented views of each image (B >= 2).
        """
        features = self.encode(pixel_values)  # (2, B, D)
        projections = per_view(self.projector, features)  # (2, B, E)
        terms = vicreg_loss(
            projections[0],
            projections[1],
            invariance_weight=self.config.invariance_weight,
            variance_weight=self.config.variance_weight,
            covariance_weight=self.config.covariance_weight,
        )
        return VICRegOutput(loss=terms.loss, invariance_loss=terms.invariance, variance_loss=terms.variance,
                            covariance_loss=terms.covariance, **self.collapse_metrics(features), projections=projections)


__all__ = ["BackboneForVICReg", "VICRegOutput"]
