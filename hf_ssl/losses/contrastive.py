"""Contrastive losses on embeddings.

InfoNCE / NT-Xent as used by SplitMask (El-Nouby et al. 2021, arXiv:2112.10740) between the two
branches of one image, with the other images of the (globally gathered) batch as negatives:

    l(a_i) = -log( exp(a_i . b_i / tau) / sum_j exp(a_i . b_j / tau) )

with a, b L2-normalised, j running over the batch of every process; the loss is symmetrised
(a -> b and b -> a) and averaged over the local batch.
"""

from __future__ import annotations

import torch

from .embeddings import check_pair, check_positive, matched_rows_cross_entropy, normalized


def info_nce_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    temperature: float = 0.2,
    gather_distributed: bool = True,
    symmetric: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE between matched rows of `query` and `key`.

    Args:
        query: ``(B, D)`` embeddings of view A (normalised here).
        key: ``(B, D)`` embeddings of view B; row i is the positive of query row i.
        temperature: softmax temperature tau (> 0).
        gather_distributed: use the keys (and queries, when symmetric) of every process as
            negatives, with gradients flowing back to their owners. A no-op in one process.
        symmetric: average the A->B and B->A directions.

    Returns:
        Scalar loss.
    """
    check_pair(query, key, "query", "key")
    check_positive(temperature, "temperature")
    query, key = normalized(query), normalized(key)
    loss = matched_rows_cross_entropy(query, key, 1 / temperature, gather_distributed)
    if symmetric:
        loss = 0.5 * (loss + matched_rows_cross_entropy(key, query, 1 / temperature, gather_distributed))
    return loss
