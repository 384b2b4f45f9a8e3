"""BEiT's block-wise masks against a transcription of the official generator.

`OfficialMaskingGenerator` below transcribes microsoft/unilm beit/masking_generator.py
(`MaskingGenerator`, BEiT v1: the block loop, which may stop short of the target) and
beit2/masking_generator.py (BEiT v2: random padding up to the exact count), with the random
sources passed in instead of the global ones. hf-ssl must draw the same blocks from the same
random stream, and its masks must have the same statistics over many draws.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy.ndimage import label

from hf_ssl.masking import BEIT_NUM_MASKED_PATCHES, beit_mask, beit_num_masked_patches, blockwise_patch_mask
from hf_ssl.masking.blockwise import pad_mask, python_random, sample_blocks

NUM_DRAWS = 2000
# A difference beyond this many standard errors of the two estimates fails (deterministic seeds:
# no flakiness; the bound is what a drift in the algorithm would have to exceed).
TOLERANCE_IN_STANDARD_ERRORS = 4.0


class OfficialMaskingGenerator:
    """Transcription of BEiT's `MaskingGenerator` (v1 loop + v2 padding); records each block's size."""

    def __init__(self, input_size, num_masking_patches, min_num_patches=16, max_num_patches=None,
                 min_aspect=0.3, max_aspect=None):
        self.height, self.width = input_size
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, rng, mask, max_mask_patches):
        delta = 0
        for attempt in range(10):
            target_area = rng.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def blocks(self, rng):
        """BEiT v1's `__call__`: ``(mask (H, W) int, [patches each block newly hid])``."""
        mask = np.zeros((self.height, self.width), dtype=np.int32)
        mask_count = 0
        block_sizes = []
        while mask_count < self.num_masking_patches:
            max_mask_patches = min(self.num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(rng, mask, max_mask_patches)
            if delta == 0:
                break
            mask_count += delta
            block_sizes.append(delta)
        return mask, block_sizes

    def __call__(self, rng, numpy_rng):
        """BEiT v2's `__call__`: v1's mask brought to exactly `num_masking_patches`."""
        mask, block_sizes = self.blocks(rng)
        mask_count = int(mask.sum())
        if mask_count > self.num_masking_patches:
            mask_x, mask_y = mask.nonzero()
            to_vis = numpy_rng.choice(mask_x.shape[0], mask_count - self.num_masking_patches, replace=False)
            mask[mask_x[to_vis], mask_y[to_vis]] = 0
        elif mask_count < self.num_masking_patches:
            mask_x, mask_y = (mask == 0).nonzero()
            to_mask = numpy_rng.choice(mask_x.shape[0], self.num_masking_patches - mask_count, replace=False)
            mask[mask_x[to_mask], mask_y[to_mask]] = 1
        assert mask.sum() == self.num_masking_patches
        return mask, block_sizes


def _official_draws(grid_size, num_masked, min_block_patches, seed, count=NUM_DRAWS):
    generator = OfficialMaskingGenerator(grid_size, num_masked, min_num_patches=min_block_patches)
    rng, numpy_rng = random.Random(seed), np.random.RandomState(seed)
    return [generator(rng, numpy_rng) for _ in range(count)]


def _assert_close(name, ours, official):
    """`ours` / `official` are samples of one statistic; their means must agree within the tolerance."""
    ours, official = np.asarray(ours, dtype=float), np.asarray(official, dtype=float)
    standard_error = math.sqrt(ours.var(ddof=1) / ours.size + official.var(ddof=1) / official.size)
    difference = ours.mean() - official.mean()
    assert abs(difference) <= TOLERANCE_IN_STANDARD_ERRORS * standard_error, (
        f"{name}: hf-ssl {ours.mean():.3f} vs official {official.mean():.3f} "
        f"(difference {difference:+.3f}, {TOLERANCE_IN_STANDARD_ERRORS} standard errors = "
        f"{TOLERANCE_IN_STANDARD_ERRORS * standard_error:.3f})"
    )


# ----------------------------------------------------------------------------------------- counts


@pytest.mark.parametrize("strategy", ["blockwise", "random"])
def test_beit_mask_hides_the_official_75_patches_at_224_px(strategy):
    # run_beit_pretraining.py: --num_mask_patches 75 on the 14x14 grid (the paper's "40 %").
    masks = beit_mask(strategy, 64, (14, 14), 0.4, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (64, 196) and masks.dtype == torch.bool
    assert masks.sum(dim=1).tolist() == [75] * 64
    assert beit_mask(strategy, 8, (14, 14), generator=torch.Generator().manual_seed(1)).sum(dim=1).tolist() == [75] * 8


def test_beit_count_scales_the_official_fraction():
    assert BEIT_NUM_MASKED_PATCHES == 75
    assert beit_num_masked_patches((14, 14), 0.4) == 75
    assert beit_num_masked_patches((4, 4), 0.4) == 6  # 16 * 75 / 196 = 6.1
    assert beit_num_masked_patches((16, 16), 0.4) == 98  # 256 * 75 / 196 = 98.0
    assert beit_num_masked_patches((14, 14), 0.2) == 38  # half the ratio: 37.5 -> 38
    assert beit_num_masked_patches((14, 14), 0.99) == 186


def test_blockwise_patch_mask_hides_exactly_the_requested_count():
    generator = torch.Generator().manual_seed(2)
    for ratio, expected in [(0.25, 49), (0.4, 78), (0.6, 118)]:
        assert blockwise_patch_mask(16, (14, 14), ratio, generator=generator).sum(dim=1).tolist() == [expected] * 16
    exact = blockwise_patch_mask(16, (14, 14), 0.4, generator=generator, num_masked_patches=75)
    assert exact.sum(dim=1).tolist() == [75] * 16
    assert blockwise_patch_mask(3, (14, 14), 0.4, num_masked_patches=0).sum() == 0


# -------------------------------------------------------------------------- the official block loop


@pytest.mark.parametrize(
    "grid_size,num_masked,min_block_patches",
    [((14, 14), 75, 16), ((14, 14), 118, 16), ((6, 6), 22, 3), ((4, 4), 6, 16), ((7, 5), 20, 2)],
)
def test_block_loop_draws_the_official_blocks_from_the_same_random_stream(grid_size, num_masked, min_block_patches):
    official = OfficialMaskingGenerator(grid_size, num_masked, min_num_patches=min_block_patches)
    for seed in range(200):
        expected_mask, expected_blocks = official.blocks(random.Random(seed))
        mask, blocks = sample_blocks(random.Random(seed), grid_size, num_masked, min_block_patches)
        assert np.array_equal(mask, expected_mask.astype(bool)), seed
        assert blocks == expected_blocks, seed


def test_block_statistics_match_the_official_generator():
    """2000 masks at BEiT's setting: blocks per mask, block area, how many masks need padding."""
    rng = python_random(torch.Generator().manual_seed(0))
    ours = [sample_blocks(rng, (14, 14), 75) for _ in range(NUM_DRAWS)]
    official = _official_draws((14, 14), 75, 16, seed=0)

    _assert_close("blocks per mask", [len(blocks) for _, blocks in ours], [len(blocks) for _, blocks in official])
    _assert_close("block area", [size for _, blocks in ours for size in blocks],
                  [size for _, blocks in official for size in blocks])
    _assert_close("masks needing padding", [mask.sum() < 75 for mask, _ in ours],
                  [sum(blocks) < 75 for _, blocks in official])
    _assert_close("patches hidden by blocks", [mask.sum() for mask, _ in ours],
                  [sum(blocks) for _, blocks in official])
    # The official loop stops short on a sizeable share of masks: padding is not a rare corner.
    assert 0.2 < np.mean([mask.sum() < 75 for mask, _ in ours]) < 0.5


def _shape_statistics(masks):
    """Per-mask hidden regions (4-connected), their mean size, and hidden neighbours per hidden patch."""
    regions, region_sizes, neighbours = [], [], []
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        labelled, count = label(mask)
        regions.append(count)
        region_sizes.append(mask.sum() / count)
        pairs = (mask[:, 1:] & mask[:, :-1]).sum() + (mask[1:, :] & mask[:-1, :]).sum()
        neighbours.append(pairs / mask.sum())
    return regions, region_sizes, neighbours


@pytest.mark.parametrize("grid_size,num_masked", [((14, 14), 75), ((14, 14), 118)])
def test_final_masks_have_the_official_shape_statistics(grid_size, num_masked):
    """Padded masks through the public function against the official v1 loop + v2 padding."""
    ours = blockwise_patch_mask(NUM_DRAWS, grid_size, 0.0, num_masked_patches=num_masked,
                                generator=torch.Generator().manual_seed(1)).view(-1, *grid_size).numpy()
    official = [mask for mask, _ in _official_draws(grid_size, num_masked, 16, seed=1)]
    assert all(mask.sum() == num_masked for mask in ours)
    for name, our_values, official_values in zip(
        ("hidden regions per mask", "mean region size", "hidden neighbours per hidden patch"),
        _shape_statistics(ours), _shape_statistics(official),
    ):
        _assert_close(name, our_values, official_values)


def test_padding_hides_uniformly_random_visible_patches():
    rng = random.Random(3)
    start = np.zeros((2, 3), dtype=bool)
    start[0, 0] = True  # already hidden: kept, never drawn again
    counts = np.zeros(6)
    for _ in range(5000):
        padded = pad_mask(rng, start, 2)
        assert padded.sum() == 2 and padded[0, 0]
        counts += padded.reshape(-1)
    frequencies = counts[1:] / 5000  # each of the 5 visible patches: 1/5
    assert np.all(np.abs(frequencies - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 5000))
    full = np.ones((2, 3), dtype=bool)
    assert np.array_equal(pad_mask(rng, full, 6), full)


# ----------------------------------------------------------------------- seeds, strategies, errors


def test_masks_are_reproducible_from_the_torch_seed_and_vary_between_images():
    first = beit_mask("blockwise", 8, (14, 14), 0.4, generator=torch.Generator().manual_seed(4))
    second = beit_mask("blockwise", 8, (14, 14), 0.4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    assert len({tuple(row.tolist()) for row in first}) == 8
    torch.manual_seed(5)
    global_first = beit_mask("blockwise", 4, (14, 14), 0.4)
    torch.manual_seed(5)
    assert torch.equal(global_first, beit_mask("blockwise", 4, (14, 14), 0.4))


def test_blockwise_masks_are_blockier_than_random_ones_at_the_same_count():
    generator = torch.Generator().manual_seed(6)
    _, _, blocky = _shape_statistics(beit_mask("blockwise", 64, (14, 14), 0.4, generator=generator).view(-1, 14, 14))
    _, _, scattered = _shape_statistics(beit_mask("random", 64, (14, 14), 0.4, generator=generator).view(-1, 14, 14))
    assert np.mean(blocky) > np.mean(scattered) + 0.5


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: beit_mask("grid", 2, (14, 14), 0.4), "mask strategy must be 'blockwise' or 'random'"),
        (lambda: blockwise_patch_mask(2, (4, 4), 0.4, num_masked_patches=17), r"num_masked_patches must be in \[0, 16\]"),
        (lambda: blockwise_patch_mask(2, (4, 4), 1.5), r"num_masked_patches must be in \[0, 16\], got 24"),
        (lambda: blockwise_patch_mask(2, (4, 4), 0.4, min_aspect_ratio=0.0), r"min_aspect_ratio must be in \(0, 1\]"),
        (lambda: blockwise_patch_mask(2, (4, 4), 0.4, num_rounds=0), "num_rounds must be >= 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
