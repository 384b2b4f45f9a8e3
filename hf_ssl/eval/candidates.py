"""What a protocol measures: the encoder under evaluation or one of its baselines (the same
architecture at random init, the raw pixels, another checkpoint the user weighs it against)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .baselines import centred_pixel_features
from .data import LabelledData
from .features import Pooling, cached_features, extract_feature_maps
from .segmentation import local_patch_pixels


@dataclass
class Candidate:
    """One thing a protocol measures.

    Args:
        name: ``"encoder"`` (the model under evaluation), ``"random_init"``, ``"raw_pixels"`` or
            ``"pretrained:<reference>"``.
        encoder: the encoder; None for the raw pixels.
        pooling: how a token sequence becomes one feature vector (`hf_ssl.eval.features`).
        cache_dir: keep frozen features here (reused while weights and images match).
    """

    name: str
    encoder: nn.Module | None = None
    pooling: Pooling = "mean"
    cache_dir: Path | None = None
    _features: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _maps: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def features(self, data: LabelledData) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen ``(N, D)`` train and ``(M, D)`` test features, computed once: pooled encoder outputs,
        or the flattened pixels minus the mean training image."""
        if self._features is None:
            if self.encoder is None:
                self._features = centred_pixel_features(data.train_pixels, data.test_pixels)
            else:
                self._features = tuple(
                    cached_features(self.encoder, pixels,
                                    self.cache_dir / f"{split}-{self.pooling}.safetensors" if self.cache_dir else None,
                                    f"{data.key}|{split}", pooling=self.pooling)
                    for split, pixels in ((data.selection.train_split, data.train_pixels),
                                          (data.selection.test_split, data.test_pixels)))
        return self._features

    def feature_maps(self, data: LabelledData) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen ``(N, h, w, D)`` train and ``(M, h, w, D)`` test feature maps, computed once: the
        encoder's last map, or each `RAW_PIXEL_PATCH`-px cell's pixels for the raw-pixel baseline."""
        if self._maps is None:
            if self.encoder is None:
                self._maps = (local_patch_pixels(data.train_pixels), local_patch_pixels(data.test_pixels))
            else:
                self._maps = (extract_feature_maps(self.encoder, data.train_pixels),
                              extract_feature_maps(self.encoder, data.test_pixels))
        return self._maps


__all__ = ["Candidate"]
