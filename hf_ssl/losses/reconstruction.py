"""Pixel-reconstruction losses for masked image modeling.

SimMIM, Xie et al. 2021, arXiv:2111.09886, section 3.4: an L1 loss on the raw (normalised) pixel
values of the hidden region only, averaged over hidden pixels and channels:

    loss = sum_{p hidden, c} |y_pc - x_pc|  /  (C * number of hidden pixels)

Visible pixels do not contribute: the task is prediction, not auto-encoding (paper, section 4.4).
"""

from __future__ import annotations

import torch


def masked_l1_loss(prediction: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over hidden pixels only.

    Args:
        prediction: ``(B, C, H, W)`` predicted pixels.
        target: ``(B, C, H, W)`` target pixels (same normalisation as the input).
        pixel_mask: ``(B, H, W)`` or ``(B, 1, H, W)``, bool or 0/1 float, 1 = hidden (in the loss).

    Returns:
        scalar tensor; 0 when no pixel is hidden (with a gradient of zeros, never NaN).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    if pixel_mask.dim() == 3:
        pixel_mask = pixel_mask.unsqueeze(1)  # (B, 1, H, W)
    weights = pixel_mask.to(prediction.dtype)
    absolute_error = (prediction - target).abs()  # (B, C, H, W)
    hidden_elements = weights.sum() * prediction.shape[1]
    return (absolute_error * weights).sum() / hidden_elements.clamp(min=1.0)


__all__ = ["masked_l1_loss"]
