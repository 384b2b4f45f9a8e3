"""Projection, prediction and DINO heads that sit between a backbone and a joint-embedding loss.

See `hf_ssl.heads.projection` for the published sizes of every method's projector / predictor.
"""

from .dino_head import DINOHead, cancel_last_layer_gradients
from .projection import PredictionHead, ProjectionHead

__all__ = ["DINOHead", "PredictionHead", "ProjectionHead", "cancel_last_layer_gradients"]
