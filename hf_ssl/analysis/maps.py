"""DINO attention maps: where the last layer's CLS token looks, and the masks they make.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", arXiv:2104.14294,
Fig. 1 and 3 (facebookresearch/dino, visualize_attention.py): take the last block's attention of
the CLS query over the patch keys, one map per head. The zero-shot mask of a head keeps the
patches holding `mass` (60 % in the paper) of that attention: sort the patches by attention,
normalise to sum 1, and keep a patch when the cumulative mass of the patches ranked below it
exceeds 1 - mass (equivalently: the mass ranked above it is still below `mass`).
"""

from __future__ import annotations

import torch

DINO_MASK_MASS = 0.6


def cls_attention_maps(
    last_attentions: torch.Tensor, grid_height: int, grid_width: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """The CLS token's attention over the patches, per head, as maps on the patch grid.

    Args:
        last_attentions: ``(B, H, T, T)`` attention probabilities of the last layer, the CLS
            token first, T = num_prefix_tokens + grid_height * grid_width.
        grid_height, grid_width: the patch grid (patches in row-major order).
        num_prefix_tokens: prefix tokens before the patches (CLS first).

    Returns:
        ``(B, H, grid_height, grid_width)``: the raw attention probabilities (not renormalised,
        as in DINO's heat maps; they sum to 1 minus the mass on prefix tokens).
    """
    if last_attentions.ndim != 4:
        raise ValueError(f"last_attentions must be (batch, heads, tokens, tokens), got {tuple(last_attentions.shape)}")
    if num_prefix_tokens < 1:
        raise ValueError(f"CLS attention maps need a CLS token: num_prefix_tokens must be >= 1, got {num_prefix_tokens}")
    batch, heads, tokens, _ = last_attentions.shape
    if tokens != num_prefix_tokens + grid_height * grid_width:
        raise ValueError(
            f"last_attentions has {tokens} tokens, expected {num_prefix_tokens} prefix + {grid_height}x{grid_width} patches"
        )
    return last_attentions[:, :, 0, num_prefix_tokens:].reshape(batch, heads, grid_height, grid_width)


def attention_mass_masks(attention_maps: torch.Tensor, mass: float = DINO_MASK_MASS) -> torch.Tensor:
    """Boolean masks of the smallest set of top-attended patches holding `mass` of each map.

    Args:
        attention_maps: ``(..., h, w)`` non-negative maps (e.g. from `cls_attention_maps`).
        mass: fraction of the (renormalised) attention to keep, in (0, 1]; DINO uses 0.6.

    Returns:
        ``(..., h, w)`` bool, True on the kept patches.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if attention_maps.ndim < 2:
        raise ValueError(f"attention_maps must end with (h, w), got shape {tuple(attention_maps.shape)}")
    flat = attention_maps.flatten(start_dim=-2).double()  # (..., h*w)
    flat = flat / flat.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    values, order = flat.sort(dim=-1, descending=True)
    mass_ranked_above = values.cumsum(dim=-1) - values  # (..., h*w), exclusive cumulative sum
    keep_sorted = mass_ranked_above < mass
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(attention_maps.shape)


def mask_jaccard(patch_masks: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Jaccard index |A ∩ B| / |A ∪ B| of each head's patch mask, upsampled to pixels, against the
    ground-truth foreground (DINO's measure of how well a head's attention segments the object).

    Args:
        patch_masks: ``(B, heads, h, w)`` bool (from `attention_mass_masks`).
        truth: ``(B, H, W)`` bool foreground, H and W multiples of h and w (each patch covers
            ``H // h`` x ``W // w`` pixels, nearest upsampling as DINO's figures do).

    Returns:
        ``(B, heads)`` float64; 1 where both masks are empty.
    """
    if patch_masks.ndim != 4 or truth.ndim != 3 or patch_masks.shape[0] != truth.shape[0]:
        raise ValueError(f"patch_masks must be (B, heads, h, w) and truth (B, H, W), got {tuple(patch_masks.shape)} "
                         f"and {tuple(truth.shape)}")
    (height, width), (rows, columns) = truth.shape[-2:], patch_masks.shape[-2:]
    if height % rows or width % columns:
        raise ValueError(f"a {height}x{width} mask does not split into the {rows}x{columns} patch grid")
    pixels = patch_masks.repeat_interleave(height // rows, dim=-2).repeat_interleave(width // columns, dim=-1)
    truth = truth.unsqueeze(1)  # (B, 1, H, W)
    intersection = (pixels & truth).sum((-2, -1)).double()
    union = (pixels | truth).sum((-2, -1)).double()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def jaccard_summary(jaccard: torch.Tensor) -> dict:
    """Per-head mean of `mask_jaccard`'s ``(B, heads)`` over the images, the best head and the mean over heads."""
    per_head = jaccard.mean(0)
    best = int(per_head.argmax())
    return {"per_head": per_head.tolist(), "best_head": best, "best_head_jaccard": float(per_head[best]),
            "mean_over_heads": float(per_head.mean())}


def jaccard_references(truth: torch.Tensor, grid: tuple[int, int]) -> dict:
    """The scale a head's Jaccard index is read on: the mean Jaccard of a mask keeping every patch, and
    of one keeping exactly the patches that touch the foreground (near the best a patch mask can do)."""
    rows, columns = grid
    touching = truth.reshape(len(truth), rows, truth.shape[1] // rows, columns, truth.shape[2] // columns).any(4).any(2)
    every = torch.ones_like(touching)
    return {"every_patch": float(mask_jaccard(every.unsqueeze(1), truth).mean()),
            "foreground_patches": float(mask_jaccard(touching.unsqueeze(1), truth).mean())}
