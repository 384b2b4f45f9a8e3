"""Losses of masked image modeling with discrete targets (BEiT, SplitMask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_token_cross_entropy(logits: torch.Tensor, target_token_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the predicted vocabulary distribution at every hidden patch.

    Args:
        logits: ``(B, M, V)`` scores over a vocabulary of V tokens for M hidden patches per image.
        target_token_ids: ``(B, M)`` integer token of each hidden patch, in ``[0, V)``.

    Returns:
        Scalar: the average over all B * M hidden patches.
    """
    if logits.shape[:-1] != target_token_ids.shape:
        raise ValueError(
            f"logits (B, M, V) and target_token_ids (B, M) disagree: {tuple(logits.shape)} vs {tuple(target_token_ids.shape)}"
        )
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target_token_ids.reshape(-1))
