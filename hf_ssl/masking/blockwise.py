"""BEiT masks: block-wise (Bao et al. 2021, arXiv:2106.08254, Algorithm 1) and uniform random.

Block-wise masking hides rectangles of random area and aspect ratio until the target number of
patches is hidden, which removes the short-range shortcuts a pixel-level task would exploit.
"""

from __future__ import annotations

import math
from typing import Literal

import torch


def random_patch_mask(
    batch_size: int, grid_size: tuple[int, int], mask_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hide ``round(mask_ratio * N)`` patches uniformly at random per image.

    Returns:
        ``(B, N)`` bool, True = hidden, with exactly that many True entries per row.
    """
    num_patches = grid_size[0] * grid_size[1]
    num_masked = int(round(mask_ratio * num_patches))
    noise = torch.rand(batch_size, num_patches, generator=generator)
    return noise.argsort(dim=1).argsort(dim=1) < num_masked


def blockwise_patch_mask(
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float,
    min_block_patches: int = 16,
    min_aspect_ratio: float = 0.3,
    num_rounds: int = 20,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BEiT's block-wise masking, topped up at random to hide exactly ``round(mask_ratio * N)``.

    Every round proposes one block per image (random area in ``[min_block_patches, remaining]``,
    log-uniform aspect ratio) and keeps it where it does not overshoot the target; the loop runs
    over rounds, the images of the batch are handled together. The final top-up makes every row
    hide the same number of patches so a batch stays rectangular.

    Returns:
        ``(B, N)`` bool, True = hidden.
    """
    height, width = grid_size
    num_patches = height * width
    num_masked = int(round(mask_ratio * num_patches))
    min_block_patches = min(min_block_patches, max(num_masked, 1))
    log_low, log_high = math.log(min_aspect_ratio), math.log(1 / min_aspect_ratio)
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)

    masks = torch.zeros(batch_size, height, width, dtype=torch.bool)
    for _round in range(num_rounds):
        remaining = num_masked - masks.sum(dim=(1, 2))  # (B,)
        if bool((remaining <= 0).all()):
            break
        upper = remaining.clamp(min=min_block_patches).float()
        area = min_block_patches + (upper - min_block_patches) * torch.rand(batch_size, generator=generator)
        aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(batch_size, generator=generator))
        block_height = (area * aspect).sqrt().round().clamp(1, height).long()  # (B,)
        block_width = (area / aspect).sqrt().round().clamp(1, width).long()
        top = (torch.rand(batch_size, generator=generator) * (height - block_height + 1)).long()
        left = (torch.rand(batch_size, generator=generator) * (width - block_width + 1)).long()
        block = (
            (rows >= top.view(-1, 1, 1))
            & (rows < (top + block_height).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1))
            & (cols < (left + block_width).view(-1, 1, 1))
        )  # (B, H, W)
        newly_hidden = (block & ~masks).sum(dim=(1, 2))
        accept = (newly_hidden <= remaining) & (remaining > 0)
        masks |= block & accept.view(-1, 1, 1)
    return _adjust_to_exact_count(masks.flatten(1), num_masked, generator)


def _adjust_to_exact_count(masks: torch.Tensor, num_masked: int, generator: torch.Generator | None) -> torch.Tensor:
    """Hide or reveal random patches so every row of `masks` hides exactly `num_masked`."""
    noise = torch.rand(masks.shape, generator=generator)
    # Rank hidden patches first (they keep priority), then random order inside each group.
    priority = masks.float() * 2 + noise  # (B, N)
    ranks = priority.argsort(dim=1, descending=True).argsort(dim=1)
    return ranks < num_masked


def beit_mask(
    strategy: Literal["blockwise", "random"],
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dispatch to the BEiT mask generator named by `strategy`; returns ``(B, N)`` bool."""
    if strategy == "blockwise":
        return blockwise_patch_mask(batch_size, grid_size, mask_ratio, generator=generator)
    if strategy == "random":
        return random_patch_mask(batch_size, grid_size, mask_ratio, generator=generator)
    raise ValueError(f"mask strategy must be 'blockwise' or 'random', got {strategy!r}")
