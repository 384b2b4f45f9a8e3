"""What the losses on batches of embeddings share: input checks, the compute dtype, L2
normalisation, where a process's rows sit in the gathered batch, and InfoNCE's cross-entropy over
matched rows (SplitMask's and MoCo v3's contrastive terms, CLIP's loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_ssl.distributed import gather_with_grad, rank_and_world_size


def check_pair(first: torch.Tensor, second: torch.Tensor, first_name: str, second_name: str) -> None:
    if first.dim() != 2 or first.shape != second.shape:
        raise ValueError(
            f"{first_name} and {second_name} must both be (B, D) with equal shapes; "
            f"got {tuple(first.shape)} and {tuple(second.shape)}"
        )


def check_positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def to_compute_dtype(tensor: torch.Tensor) -> torch.Tensor:
    # Softmaxes and batch statistics are unstable in bf16/fp16; float64 stays float64 (gradcheck).
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def normalized(tensor: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, D) rows of unit L2 norm, in the compute dtype."""
    return F.normalize(to_compute_dtype(tensor), dim=-1)


def global_row_indices(local_rows: int, gathered: bool, device: torch.device) -> torch.Tensor:
    """(local_rows,) index of this process's rows inside a batch gathered with `gather_with_grad`."""
    rank = rank_and_world_size()[0] if gathered else 0
    return torch.arange(local_rows, device=device) + rank * local_rows


def matched_rows_cross_entropy(
    query: torch.Tensor, key: torch.Tensor, scale: torch.Tensor | float, gather_distributed: bool
) -> torch.Tensor:
    """One direction of InfoNCE: each query row against every key row, its own row the positive.

        l_i = -log( exp(s q_i . k_i) / sum_j exp(s q_i . k_j) ),   mean over this process's rows i

    with j running over the keys of every process when `gather_distributed` (gathered with
    gradients flowing back to their owners; detach `key` for none).

    Args:
        query: ``(B, D)`` rows already L2-normalised in the compute dtype (`normalized`: the
            symmetric losses normalise each side once for both directions).
        key: ``(B, D)`` likewise; row i is the positive of query row i.
        scale: s > 0, 1 / temperature (or CLIP's learned exp(t), a scalar tensor).
        gather_distributed: take the negatives from every process.

    Returns:
        Scalar.
    """
    all_keys = gather_with_grad(key) if gather_distributed else key  # (W*B, D)
    labels = global_row_indices(query.shape[0], gather_distributed, query.device)
    return F.cross_entropy(scale * query @ all_keys.T, labels)  # (B, W*B) logits


__all__ = ["check_pair", "check_positive", "global_row_indices", "matched_rows_cross_entropy", "normalized",
           "to_compute_dtype"]
