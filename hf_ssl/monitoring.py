"""Training-quality monitors that catch a collapsing joint-embedding run while it trains.

Models put these scalars in their output (the loop logs every scalar); the loop warns when
``embedding_std`` falls below `COLLAPSE_THRESHOLD`.

- ``embedding_std``: the per-dimension standard deviation of the L2-normalised embeddings over the
  batch, averaged and multiplied by sqrt(D) (Chen & He 2020, arXiv:2011.10566, section 4.1: a
  healthy output has std ~ 1/sqrt(D) per dimension). About 1 for spread-out embeddings, 0 when
  every image maps to the same point.
- ``embedding_rank``: RankMe (Garrido et al. 2023, arXiv:2210.02885), the effective rank
  ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / sum(sigma) + eps`` of the batch's embedding
  matrix: between 1 (dimensional collapse) and min(B, D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

COLLAPSE_THRESHOLD = 0.1
RANKME_EPSILON = 1e-7


@torch.no_grad()
def normalized_embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """``sqrt(D) * mean_d std_b(normalize(z)[b, d])`` of ``(B, D)`` embeddings (scalar, no gradient)."""
    if embeddings.dim() != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings must be (B >= 2, D), got {tuple(embeddings.shape)}")
    normalized = F.normalize(embeddings.float(), dim=-1)
    return normalized.std(dim=0).mean() * math.sqrt(embeddings.shape[1])


@torch.no_grad()
def rank_me(embeddings: torch.Tensor) -> torch.Tensor:
    """RankMe effective rank of ``(B, D)`` embeddings (scalar, no gradient)."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (B, D), got {tuple(embeddings.shape)}")
    singular_values = torch.linalg.svdvals(embeddings.float())
    distribution = singular_values / singular_values.sum().clamp_min(RANKME_EPSILON) + RANKME_EPSILON
    return torch.exp(-(distribution * distribution.log()).sum())


def collapse_metrics(embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"embedding_std", "embedding_rank"}`` of a batch of embeddings, ready for a model output."""
    return {"embedding_std": normalized_embedding_std(embeddings), "embedding_rank": rank_me(embeddings)}


__all__ = ["COLLAPSE_THRESHOLD", "collapse_metrics", "normalized_embedding_std", "rank_me"]
