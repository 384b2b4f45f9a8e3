"""Multi-crop inputs as backbone batches (DINO, DINOv2)."""

from __future__ import annotations

import torch


def crops_to_batch(crops: torch.Tensor) -> torch.Tensor:
    """``(B, n, C, H, W) -> (n * B, C, H, W)`` crop-major: rows ``c * B ... (c + 1) * B - 1`` are
    crop c of every image, the layout of the official code's ``torch.cat(list_of_crops)``."""
    return crops.transpose(0, 1).flatten(0, 1)


__all__ = ["crops_to_batch"]
