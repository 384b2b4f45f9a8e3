"""Contrastive losses on embeddings.

InfoNCE / NT-Xent as used by SplitMask (El-Nouby et al. 2021, arXiv:2112.10740) between the two
branches of one image, with the other images of the (globally gathered) batch as negatives:

    l(a_i) = -log( exp(a_i . b_i / tau) / sum_j exp(a_i . b_j / tau) )

with a, b L2-normalised, j running over the batch of every process; the loss is symmetrised
(a -> b and b -> a) and averaged over the local batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_ssl.distributed import gather_with_grad, rank_and_world_size


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
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"query and key must both be (B, D); got {tuple(query.shape)} and {tuple(key.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    query = F.normalize(query.float(), dim=-1)
    key = F.normalize(key.float(), dim=-1)

    rank, _ = rank_and_world_size()
    local_batch = query.shape[0]
    all_keys = gather_with_grad(key) if gather_distributed else key  # (W*B, D)
    # The positive of local row i sits at global row rank * B + i.
    offset = rank * local_batch if gather_distributed else 0
    targets = torch.arange(local_batch, device=query.device) + offset

    loss = F.cross_entropy(query @ all_keys.T / temperature, targets)  # (B, W*B) logits
    if symmetric:
        all_queries = gather_with_grad(query) if gather_distributed else query
        loss = 0.5 * (loss + F.cross_entropy(key @ all_queries.T / temperature, targets))
    return loss
