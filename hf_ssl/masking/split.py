"""SplitMask's split of each image's patches into two disjoint halves that cover every patch.

El-Nouby et al. 2021, arXiv:2112.10740: the patches of an image are divided at random into two
groups A and B; view 1 shows A and hides B, view 2 shows B and hides A.
"""

from __future__ import annotations

import torch


def random_split_mask(
    batch_size: int, num_patches: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Sample one random half of the patches per image.

    Args:
        batch_size: number of images B.
        num_patches: patches per image N.
        generator: optional RNG for reproducible splits.

    Returns:
        ``(B, N)`` bool; True marks group A (hidden in view 1, visible in view 2). Each row has
        exactly ``N // 2`` True entries.
    """
    noise = torch.rand(batch_size, num_patches, generator=generator, device=device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, N) rank of each patch's noise
    return ranks < num_patches // 2


def split_indices(bool_masked_pos: torch.Tensor, num_true: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the two groups of a split mask, each sorted by patch position.

    Args:
        bool_masked_pos: ``(B, N)`` bool with the same number of True entries in every row.
        num_true: that number, where the caller drew the mask and knows it: the mask is then not
            read back from the device (no host sync, and a compiled model keeps one graph). When
            None it is read and checked.

    Returns:
        ``(group_a, group_b)``: ``(B, K)`` indices of the True patches and ``(B, N - K)`` of the
        False ones.
    """
    if num_true is None:
        counts = bool_masked_pos.sum(dim=1)
        if not bool(torch.all(counts == counts[0])):
            raise ValueError("bool_masked_pos must hide the same number of patches in every image of the batch")
        num_true = int(counts[0])
    # A stable sort puts True (1) rows first after negation, keeping positional order in each group.
    order = torch.sort((~bool_masked_pos).to(torch.int8), dim=1, stable=True).indices  # (B, N)
    return order[:, :num_true], order[:, num_true:]
