"""SimMIM masks: patch-aligned masking with a mask patch size independent of the model's patch size.

SimMIM, Xie et al. 2021, arXiv:2111.09886, section 3.1. Masks are drawn on the coarse grid of
*mask patches* (default 32 px) and then repeated onto the encoder's patch grid (e.g. 16 px for
ViT, 4 px for Swin), so every hidden unit is a whole mask patch whatever the encoder. Three
strategies from the paper's ablation (Table 1):

- ``"random"``: each mask patch is hidden at random; exactly ``ceil(mask_ratio * M)`` of the
  ``M`` mask patches per image (the paper's default, ratio 0.6 with 32-px mask patches).
- ``"square"``: one randomly placed square of mask patches whose area is the closest square to
  ``mask_ratio * M`` (the ratio is therefore approximate: 6x6 grid, 0.6 -> 5x5 = 0.69).
- ``"blockwise"``: BEiT's block-wise masking (rectangles of random area and aspect ratio) on the
  mask-patch grid, padded to exactly ``ceil(mask_ratio * M)`` hidden mask patches.

The count rounds up, as the official `MaskGenerator` does (microsoft/SimMIM, data/data_simmim.py:
``mask_count = int(np.ceil(token_count * mask_ratio))``): at ViT 224 px with 32-px mask patches
that is 30 of 49, at Swin 192 px 22 of 36.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .blockwise import blockwise_patch_mask, random_patch_mask

MaskStrategy = Literal["random", "square", "blockwise"]
MASK_STRATEGIES: tuple[str, ...] = ("random", "square", "blockwise")


def square_patch_mask(
    batch_size: int, grid_size: tuple[int, int], mask_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hide one square of side ``round(sqrt(mask_ratio * N))`` cells at a random position per image.

    Returns:
        ``(B, N)`` bool, True = hidden; each row hides ``side ** 2`` contiguous cells.
    """
    height, width = grid_size
    side = int(round(math.sqrt(mask_ratio * height * width)))
    side = max(1, min(side, height, width))
    top = torch.randint(0, height - side + 1, (batch_size,), generator=generator)  # (B,)
    left = torch.randint(0, width - side + 1, (batch_size,), generator=generator)
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    square = (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + side).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + side).view(-1, 1, 1))
    )  # (B, H, W)
    return square.flatten(1)


def simmim_num_masked_patches(num_cells: int, mask_ratio: float) -> int:
    """Hidden mask patches per image: ``ceil(num_cells * mask_ratio)``, the official count."""
    return int(math.ceil(num_cells * mask_ratio))


def blockwise_min_patches(num_cells: int) -> int:
    """BEiT's smallest block is 16 of 196 patches (1/12 of the grid); keep that fraction on coarse grids."""
    return max(1, round(num_cells * 16 / 196))


def coarse_mask(
    strategy: MaskStrategy,
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw masks on a grid of mask patches with the named strategy; returns ``(B, rows * cols)`` bool."""
    num_cells = grid_size[0] * grid_size[1]
    if strategy == "random":
        return random_patch_mask(
            batch_size, grid_size, mask_ratio, generator=generator,
            num_masked_patches=simmim_num_masked_patches(num_cells, mask_ratio),
        )
    if strategy == "square":
        return square_patch_mask(batch_size, grid_size, mask_ratio, generator=generator)
    if strategy == "blockwise":
        return blockwise_patch_mask(
            batch_size, grid_size, mask_ratio, min_block_patches=blockwise_min_patches(num_cells),
            generator=generator, num_masked_patches=simmim_num_masked_patches(num_cells, mask_ratio),
        )
    raise ValueError(f"mask_strategy must be one of {MASK_STRATEGIES}, got {strategy!r}")


def upsample_patch_mask(mask: torch.Tensor, grid_size: tuple[int, int], scale: int) -> torch.Tensor:
    """Repeat each cell of a flattened ``(B, rows * cols)`` mask into a ``scale x scale`` block.

    Returns:
        ``(B, rows * scale * cols * scale)`` with the same dtype, row-major like the input.
    """
    rows, cols = grid_size
    grid = mask.view(-1, rows, cols)
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)  # (B, rows*s, cols*s)
    return grid.flatten(1)


@dataclass(frozen=True)
class SimMIMMaskGenerator:
    """Patch-aligned SimMIM masks for one geometry.

    Args:
        image_size: input side in pixels.
        model_patch_size: the encoder's patch size (4 for Swin, 16 for ViT/16).
        mask_patch_size: side of a masking unit in pixels (SimMIM default 32).
        mask_ratio: fraction of mask patches hidden (SimMIM default 0.6).
        strategy: ``"random"``, ``"square"`` or ``"blockwise"``.

    Calling it returns the encoder-grid mask ``(B, (image_size / model_patch_size) ** 2)`` bool,
    the ``bool_masked_pos`` that `ViTModel` / `SwinModel` take; `pixel_mask` returns the same mask
    at pixel resolution.
    """

    image_size: int
    model_patch_size: int
    mask_patch_size: int = 32
    mask_ratio: float = 0.6
    strategy: MaskStrategy = "random"

    def __post_init__(self):
        if self.mask_patch_size % self.model_patch_size != 0:
            raise ValueError(
                f"mask_patch_size ({self.mask_patch_size}) must be a multiple of the model's patch size "
                f"({self.model_patch_size})"
            )
        if self.image_size % self.mask_patch_size != 0:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by mask_patch_size ({self.mask_patch_size})")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.strategy not in MASK_STRATEGIES:
            raise ValueError(f"mask_strategy must be one of {MASK_STRATEGIES}, got {self.strategy!r}")

    @property
    def mask_grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.mask_patch_size
        return side, side

    @property
    def model_grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.model_patch_size
        return side, side

    def coarse(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Masks on the mask-patch grid: ``(B, (image_size / mask_patch_size) ** 2)`` bool."""
        return coarse_mask(self.strategy, batch_size, self.mask_grid_size, self.mask_ratio, generator=generator)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        scale = self.mask_patch_size // self.model_patch_size
        return upsample_patch_mask(self.coarse(batch_size, generator), self.mask_grid_size, scale)

    def pixel_mask(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Masks at pixel resolution: ``(B, image_size, image_size)`` bool."""
        masks = upsample_patch_mask(self.coarse(batch_size, generator), self.mask_grid_size, self.mask_patch_size)
        return masks.view(batch_size, self.image_size, self.image_size)


__all__ = [
    "MASK_STRATEGIES",
    "SimMIMMaskGenerator",
    "blockwise_min_patches",
    "coarse_mask",
    "simmim_num_masked_patches",
    "square_patch_mask",
    "upsample_patch_mask",
]
