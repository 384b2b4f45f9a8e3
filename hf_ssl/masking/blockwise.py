"""BEiT masks: block-wise (Bao et al. 2021, arXiv:2106.08254, Algorithm 1) and uniform random.

Block-wise masking hides rectangles of random area and aspect ratio until the target number of
patches is hidden, which removes the short-range shortcuts a pixel-level task would exploit.

The block loop follows the official generator rather than the paper's pseudo-code (microsoft/unilm,
beit/masking_generator.py, `MaskingGenerator._mask` / `__call__`): each block draws a target area
uniformly in ``[min_block_patches, remaining]`` (Python's ``uniform`` also accepts
``remaining < 16``, then the area lies in ``[remaining, 16]``) and a log-uniform aspect ratio in
``[0.3, 1 / 0.3]``; a block whose side would reach the grid's side is rejected; a placed block is
kept when it hides at least one new patch and no more than the remaining count; a block gets 10
attempts, and the loop stops when a block finds no place. That loop never overshoots the target
but can stop short of it (at BEiT's setting a third of the masks do, most by 1-3 patches).
hf-ssl's models need the same number of hidden patches in every image of a batch, so the missing
patches are then hidden uniformly at random among the visible ones, as BEiT v2's generator does
(microsoft/unilm, beit2/masking_generator.py): the blocks keep the official statistics.

The count: the official recipe names a number of patches, not a ratio (``--num_mask_patches 75``
at 224 px with 16-px patches, beit/run_beit_pretraining.py and the README's commands), i.e.
75 / 196 = 0.383 of the grid for what the paper calls masking 40 %. `beit_mask` keeps that
recipe: the nominal ratio 0.4 on a 14x14 grid hides 75 patches, and other grids and ratios scale
that count, as the authors advise for other resolutions (microsoft/unilm issue #396).
"""

from __future__ import annotations

import math
import random
from typing import Literal

import numpy as np
import torch

# The official BEiT recipe: 75 hidden patches on the 14x14 grid of a 224-px image with 16-px
# patches, which the paper describes as 40 %.
BEIT_NUM_MASKED_PATCHES = 75
BEIT_NUM_PATCHES = 196
BEIT_MASK_RATIO = 0.4
BEIT_MIN_BLOCK_PATCHES = 16
BEIT_MIN_ASPECT_RATIO = 0.3
BEIT_BLOCK_ATTEMPTS = 10


def beit_num_masked_patches(grid_size: tuple[int, int], mask_ratio: float) -> int:
    """Hidden patches of the BEiT recipe: 75 of 196 for the nominal ratio 0.4, scaled to other grids and ratios."""
    num_patches = grid_size[0] * grid_size[1]
    fraction = mask_ratio / BEIT_MASK_RATIO * BEIT_NUM_MASKED_PATCHES / BEIT_NUM_PATCHES
    return min(num_patches, int(round(num_patches * fraction)))


def _check_count(num_masked_patches: int, num_patches: int) -> None:
    if not 0 <= num_masked_patches <= num_patches:
        raise ValueError(f"num_masked_patches must be in [0, {num_patches}], got {num_masked_patches}")


def python_random(generator: torch.Generator | None) -> random.Random:
    """A `random.Random` seeded from `generator` (or torch's global RNG), so one torch seed fixes every mask."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return random.Random(seed)


def random_patch_mask(
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
    num_masked_patches: int | None = None,
) -> torch.Tensor:
    """Hide ``round(mask_ratio * N)`` patches (or `num_masked_patches`) uniformly at random per image.

    Returns:
        ``(B, N)`` bool, True = hidden, with exactly that many True entries per row.
    """
    num_patches = grid_size[0] * grid_size[1]
    num_masked = int(round(mask_ratio * num_patches)) if num_masked_patches is None else num_masked_patches
    _check_count(num_masked, num_patches)
    noise = torch.rand(batch_size, num_patches, generator=generator)
    return noise.argsort(dim=1).argsort(dim=1) < num_masked


def sample_blocks(
    rng: random.Random,
    grid_size: tuple[int, int],
    num_masked_patches: int,
    min_block_patches: int = BEIT_MIN_BLOCK_PATCHES,
    min_aspect_ratio: float = BEIT_MIN_ASPECT_RATIO,
    num_attempts: int = BEIT_BLOCK_ATTEMPTS,
    max_block_patches: float | None = None,
) -> tuple[np.ndarray, list[int]]:
    """One image's blocks, drawn by the official BEiT loop (may stop short of the target).

    Args:
        rng: source of every random number, drawn in the official generator's order.
        grid_size: ``(rows, cols)`` of the patch grid.
        num_masked_patches: target count; no block ever takes the mask past it.
        min_block_patches: lower end of a block's target area (BEiT: 16).
        min_aspect_ratio: aspect ratios are log-uniform in ``[min, 1 / min]`` (BEiT: 0.3).
        num_attempts: placements tried per block before the loop gives up (BEiT: 10).
        max_block_patches: the most patches one block may newly hide (DINOv2's generator: half the
            grid; BEiT: no bound but the remaining count).

    Returns:
        ``(rows, cols)`` bool mask (True = hidden) and the number of patches each kept block newly
        hid, in order; their sum is the mask's count, at most `num_masked_patches`.
    """
    height, width = grid_size
    log_low, log_high = math.log(min_aspect_ratio), math.log(1 / min_aspect_ratio)
    mask = np.zeros((height, width), dtype=bool)
    block_sizes: list[int] = []
    hidden = 0
    while hidden < num_masked_patches:
        remaining = num_masked_patches - hidden
        if max_block_patches is not None:
            remaining = min(remaining, max_block_patches)
        newly_hidden = 0
        for _attempt in range(num_attempts):
            target_area = rng.uniform(min_block_patches, remaining)
            aspect_ratio = math.exp(rng.uniform(log_low, log_high))
            block_height = int(round(math.sqrt(target_area * aspect_ratio)))
            block_width = int(round(math.sqrt(target_area / aspect_ratio)))
            # The official test is strict: a block never spans a whole row or column of the grid.
            if block_width >= width or block_height >= height:
                continue
            top = rng.randint(0, height - block_height)
            left = rng.randint(0, width - block_width)
            window = mask[top : top + block_height, left : left + block_width]
            candidate = block_height * block_width - int(window.sum())
            if 0 < candidate <= remaining:
                window[...] = True
                newly_hidden = candidate
                break
        if newly_hidden == 0:
            break
        hidden += newly_hidden
        block_sizes.append(newly_hidden)
    return mask, block_sizes


def pad_mask(rng: random.Random, mask: np.ndarray, num_masked_patches: int) -> np.ndarray:
    """Hide uniformly random visible patches of `mask` until it hides `num_masked_patches` (BEiT v2's fix-up)."""
    flat = mask.reshape(-1).copy()
    missing = num_masked_patches - int(flat.sum())
    if missing > 0:
        visible = np.flatnonzero(~flat).tolist()
        flat[rng.sample(visible, missing)] = True
    return flat.reshape(mask.shape)


# Python's random module and NumPy, one image at a time: a compiled model calls it as it is, uncompiled.
@torch.compiler.disable
def blockwise_patch_mask(
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float,
    min_block_patches: int = BEIT_MIN_BLOCK_PATCHES,
    min_aspect_ratio: float = BEIT_MIN_ASPECT_RATIO,
    num_rounds: int = BEIT_BLOCK_ATTEMPTS,
    generator: torch.Generator | None = None,
    num_masked_patches: int | None = None,
) -> torch.Tensor:
    """BEiT's block-wise masking, padded at random to hide exactly ``round(mask_ratio * N)`` patches.

    Args:
        batch_size: number of masks B.
        grid_size: ``(rows, cols)`` of the patch grid, N = rows * cols.
        mask_ratio: fraction of patches to hide (ignored when `num_masked_patches` is given).
        min_block_patches: lower end of a block's target area (BEiT: 16).
        min_aspect_ratio: aspect ratios are log-uniform in ``[min, 1 / min]`` (BEiT: 0.3).
        num_rounds: placements tried per block before the block loop stops (BEiT: 10).
        generator: seeds the masks; torch's global RNG when None.
        num_masked_patches: exact count to hide, overriding `mask_ratio`.

    Returns:
        ``(B, N)`` bool, True = hidden, the same count in every row.
    """
    if not 0.0 < min_aspect_ratio <= 1.0:
        raise ValueError(f"min_aspect_ratio must be in (0, 1], got {min_aspect_ratio}")
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    num_patches = grid_size[0] * grid_size[1]
    num_masked = int(round(mask_ratio * num_patches)) if num_masked_patches is None else num_masked_patches
    _check_count(num_masked, num_patches)
    rng = python_random(generator)
    masks = np.empty((batch_size, num_patches), dtype=bool)
    for index in range(batch_size):
        blocks, _sizes = sample_blocks(rng, grid_size, num_masked, min_block_patches, min_aspect_ratio, num_rounds)
        masks[index] = pad_mask(rng, blocks, num_masked).reshape(-1)
    return torch.from_numpy(masks)


# DINOv2's generator (facebookresearch/dinov2 dinov2/data/masking.py, as train.py builds it): blocks
# of at least 4 patches, each at most half the grid.
DINOV2_MIN_BLOCK_PATCHES = 4
DINOV2_MAX_BLOCK_FRACTION = 0.5


@torch.compiler.disable
def dinov2_masks(
    num_images: int,
    grid_size: tuple[int, int],
    mask_probability: float = 0.5,
    mask_ratio_range: tuple[float, float] = (0.1, 0.5),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The iBOT masks of a batch of global crops, as DINOv2's ``collate_data_and_cast`` draws them.

    ``int(num_images * mask_probability)`` images are masked; the ratio range is cut into that many
    equal intervals and image i hides ``int(N * uniform(interval i))`` patches in BEiT-style blocks
    (`sample_blocks`, blocks of 4 to N / 2 patches, never padded: a mask may stop short of its
    count); the other images hide nothing; the rows are then shuffled. Unlike the official
    collate, a batch whose masked images all came out empty gets one random patch hidden, so that
    the masked-patch loss always has a patch to average over (only possible on tiny grids).

    Returns:
        ``(num_images, N)`` bool, True = hidden; the counts differ between rows.
    """
    low, high = mask_ratio_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"mask_ratio_range must satisfy 0 <= min <= max <= 1, got {mask_ratio_range}")
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    rng = python_random(generator)
    num_patches = grid_size[0] * grid_size[1]
    num_masked_images = int(num_images * mask_probability)
    bounds = torch.linspace(low, high, num_masked_images + 1).tolist()
    masks = np.zeros((num_images, num_patches), dtype=bool)
    for index in range(num_masked_images):
        count = int(num_patches * rng.uniform(bounds[index], bounds[index + 1]))
        blocks, _sizes = sample_blocks(rng, grid_size, count, DINOV2_MIN_BLOCK_PATCHES, BEIT_MIN_ASPECT_RATIO,
                                       BEIT_BLOCK_ATTEMPTS, max_block_patches=DINOV2_MAX_BLOCK_FRACTION * num_patches)
        masks[index] = blocks.reshape(-1)
    if num_masked_images and not masks.any():
        masks[0, rng.randrange(num_patches)] = True
    order = list(range(num_images))
    rng.shuffle(order)
    return torch.from_numpy(masks[order])


def beit_mask(
    strategy: Literal["blockwise", "random"],
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float = BEIT_MASK_RATIO,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BEiT's mask named by `strategy`: ``(B, N)`` bool hiding `beit_num_masked_patches` per row.

    That is 75 of 196 patches at the default ratio 0.4, the official recipe. Both strategies hide
    the same count, so the paper's block-wise vs random ablation compares mask shapes only.
    """
    num_masked = beit_num_masked_patches(grid_size, mask_ratio)
    if strategy == "blockwise":
        return blockwise_patch_mask(
            batch_size, grid_size, mask_ratio, generator=generator, num_masked_patches=num_masked
        )
    if strategy == "random":
        return random_patch_mask(batch_size, grid_size, mask_ratio, generator=generator, num_masked_patches=num_masked)
    raise ValueError(f"mask strategy must be 'blockwise' or 'random', got {strategy!r}")


__all__ = [
    "BEIT_MASK_RATIO",
    "BEIT_NUM_MASKED_PATCHES",
    "beit_mask",
    "beit_num_masked_patches",
    "blockwise_patch_mask",
    "dinov2_masks",
    "pad_mask",
    "python_random",
    "random_patch_mask",
    "sample_blocks",
]
