"""Per-head attention statistics of a ViT: distance, entropy, and diversity between heads.

Xie et al. 2022, "Revealing the Dark Secrets of Masked Image Modeling", arXiv:2205.13543, compare
MIM, contrastive and supervised ViTs with three statistics of each head's attention:
- average attention distance (local or global attention; also Dosovitskiy et al. 2020,
  arXiv:2010.11929, Fig. 7): ``sum_k a_qk * ||c_q - c_k||``, in pixels, averaged over queries;
- attention entropy (focused or broad): ``-sum_k a_qk log a_qk``, averaged over queries;
- KL divergence between the heads of a layer (do heads attend to different tokens):
  ``KL(a^i_q || a^j_q)`` averaged over ordered head pairs i != j and over queries.

Prefix tokens (CLS, distillation, registers) have no position in the image. As in the
timm-style analyses of mean attention distance, they are dropped as queries and as keys; the
remaining patch-to-patch rows are renormalised to sum to 1, so that every statistic describes
a distribution over image positions (a head that sends most of its mass to CLS is then measured
by where the rest goes, and `prefix_attention_share` reports how much went to the prefix).
All functions take attention probabilities ``(B, H, Q, K)`` and return per-head means over the
batch and the queries, so that batches of equal size can be averaged afterwards.
"""

from __future__ import annotations

import torch

# log(0) guard: softmax probabilities underflow to exactly 0 for far-away keys in float32.
PROBABILITY_FLOOR = 1e-12


def _check_attention(attentions: torch.Tensor, name: str = "attentions") -> None:
    if attentions.ndim != 4 or attentions.shape[-1] < 1:
        raise ValueError(f"{name} must be (batch, heads, queries, keys), got shape {tuple(attentions.shape)}")


def patch_attention(attentions: torch.Tensor, num_prefix_tokens: int, renormalize: bool = True) -> torch.Tensor:
    """Patch-to-patch attention: prefix tokens dropped as queries and keys.

    Args:
        attentions: ``(B, H, T, T)`` attention probabilities, T = num_prefix_tokens + patches.
        num_prefix_tokens: CLS-like tokens at the start of the sequence (1 for ViT, 2 for DeiT).
        renormalize: rescale each row to sum to 1 over the patches.

    Returns:
        ``(B, H, P, P)`` with P = T - num_prefix_tokens.
    """
    _check_attention(attentions)
    if not 0 <= num_prefix_tokens < attentions.shape[-1]:
        raise ValueError(f"num_prefix_tokens must be in [0, {attentions.shape[-1]}), got {num_prefix_tokens}")
    patches = attentions[:, :, num_prefix_tokens:, num_prefix_tokens:].double()  # (B, H, P, P)
    if renormalize:
        patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(PROBABILITY_FLOOR)
    return patches


def prefix_attention_share(attentions: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Mean attention mass that patch queries send to the prefix tokens, per head.

    Args:
        attentions: ``(B, H, T, T)`` attention probabilities.
        num_prefix_tokens: CLS-like tokens at the start of the sequence.

    Returns:
        ``(H,)`` float64 in [0, 1] (zeros when there is no prefix token).
    """
    _check_attention(attentions)
    share = attentions[:, :, num_prefix_tokens:, :num_prefix_tokens].double().sum(dim=-1)  # (B, H, P)
    return share.mean(dim=(0, 2))


def patch_centre_distances(grid_height: int, grid_width: int, patch_size: int | float) -> torch.Tensor:
    """Euclidean distances in pixels between the centres of every pair of patches.

    Args:
        grid_height, grid_width: patches per column and per row; patches are numbered row-major
            (the order of a ViT's patch embedding).
        patch_size: side of a patch in pixels.

    Returns:
        ``(P, P)`` float64, P = grid_height * grid_width.
    """
    if grid_height < 1 or grid_width < 1:
        raise ValueError(f"grid_height and grid_width must be >= 1, got {grid_height} and {grid_width}")
    rows, columns = torch.meshgrid(torch.arange(grid_height), torch.arange(grid_width), indexing="ij")
    centres = torch.stack([rows.flatten(), columns.flatten()], dim=1).double()  # (P, 2)
    return torch.cdist(centres, centres) * float(patch_size)


def average_attention_distance(
    attentions: torch.Tensor, grid_height: int, grid_width: int, patch_size: int | float
) -> torch.Tensor:
    """Attention-weighted mean distance between query and key patches, in pixels, per head.

    Args:
        attentions: ``(B, H, P, P)`` patch-to-patch attention (see `patch_attention`), rows
            summing to 1, P = grid_height * grid_width in row-major order.
        grid_height, grid_width: the patch grid.
        patch_size: side of a patch in pixels.

    Returns:
        ``(H,)`` float64: ``mean_{b,q} sum_k a_bhqk * d(q, k)``.
    """
    _check_attention(attentions)
    distances = patch_centre_distances(grid_height, grid_width, patch_size).to(attentions.device)  # (P, P)
    if attentions.shape[-2:] != distances.shape:
        raise ValueError(
            f"attentions must be (B, H, {distances.shape[0]}, {distances.shape[1]}) for a {grid_height}x{grid_width} "
            f"grid, got {tuple(attentions.shape)}"
        )
    per_query = (attentions.double() * distances).sum(dim=-1)  # (B, H, P)
    return per_query.mean(dim=(0, 2))


def attention_entropy(attentions: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each query's attention distribution, averaged per head.

    Args:
        attentions: ``(B, H, Q, K)`` probabilities, rows summing to 1. A uniform row has
            entropy log K; a one-hot row has 0.

    Returns:
        ``(H,)`` float64: ``mean_{b,q} -sum_k a log a``.
    """
    _check_attention(attentions)
    probabilities = attentions.double()
    per_query = -(probabilities * probabilities.clamp_min(PROBABILITY_FLOOR).log()).sum(dim=-1)  # (B, H, Q)
    return per_query.mean(dim=(0, 2))


def pairwise_head_kl_divergence(attentions: torch.Tensor) -> torch.Tensor:
    """KL divergence between the attention distributions of every ordered pair of heads.

    Args:
        attentions: ``(B, H, Q, K)`` probabilities, rows summing to 1.

    Returns:
        ``(H, H)`` float64, entry (i, j) = ``mean_{b,q} KL(a^i_bq || a^j_bq)``; zero diagonal.
    """
    _check_attention(attentions)
    probabilities = attentions.double()
    log_probabilities = probabilities.clamp_min(PROBABILITY_FLOOR).log()  # (B, H, Q, K)
    # sum_k p_i (log p_i - log p_j) = (p_i . log p_i) - (p_i . log p_j)
    self_term = (probabilities * log_probabilities).sum(dim=-1)  # (B, H, Q)
    cross_term = torch.einsum("biqk,bjqk->bqij", probabilities, log_probabilities)  # (B, Q, H, H)
    divergence = self_term.permute(0, 2, 1).unsqueeze(-1) - cross_term  # (B, Q, H, H)
    return divergence.mean(dim=(0, 1))


def head_kl_divergence(attentions: torch.Tensor) -> torch.Tensor:
    """Mean KL divergence between the heads of one layer (0 when all heads attend alike).

    Args:
        attentions: ``(B, H, Q, K)`` probabilities, rows summing to 1, H >= 2.

    Returns:
        scalar float64: the mean of `pairwise_head_kl_divergence` over pairs i != j.
    """
    _check_attention(attentions)
    heads = attentions.shape[1]
    if heads < 2:
        raise ValueError(f"head_kl_divergence needs at least 2 heads, got {heads}")
    return pairwise_head_kl_divergence(attentions).sum() / (heads * (heads - 1))
