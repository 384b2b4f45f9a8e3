"""SimMIM mask generators and the AvgDist metric: invariants, hand-computed values, brute force."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_ssl.masking.avg_dist import average_distance, mask_generator_average_distance, masked_pixel_distances
from hf_ssl.masking.simmim import (
    MASK_STRATEGIES,
    SimMIMMaskGenerator,
    blockwise_min_patches,
    simmim_num_masked_patches,
    square_patch_mask,
    upsample_patch_mask,
)

REPO = Path(__file__).resolve().parents[1]


def _blocks(mask: torch.Tensor, side: int, scale: int) -> torch.Tensor:
    """(B, side*scale*side*scale) -> (B, side, side, scale*scale): the cells of each mask patch."""
    grid = mask.view(-1, side, scale, side, scale)
    return grid.permute(0, 1, 3, 2, 4).reshape(-1, side, side, scale * scale)


def test_upsample_patch_mask_hand_computed():
    mask = torch.tensor([[True, False, False, True]])  # 2x2 grid: diagonal
    expected = torch.tensor([
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 1, 1],
    ], dtype=torch.bool).flatten()
    assert torch.equal(upsample_patch_mask(mask, (2, 2), 2)[0], expected)


@pytest.mark.parametrize("strategy", MASK_STRATEGIES)
@pytest.mark.parametrize("image_size,model_patch_size,mask_patch_size", [(192, 4, 32), (224, 16, 32), (32, 4, 8)])
def test_masks_are_aligned_to_mask_patches(strategy, image_size, model_patch_size, mask_patch_size):
    generator = SimMIMMaskGenerator(image_size, model_patch_size, mask_patch_size, 0.6, strategy)
    masks = generator(16, generator=torch.Generator().manual_seed(0))
    model_side = image_size // model_patch_size
    assert masks.shape == (16, model_side**2) and masks.dtype == torch.bool
    blocks = _blocks(masks, image_size // mask_patch_size, mask_patch_size // model_patch_size)
    # Every mask patch is hidden or visible as a whole.
    assert torch.equal(blocks.all(dim=-1), blocks.any(dim=-1))
    # The coarse mask drawn with the same seed is what was upsampled.
    coarse = generator.coarse(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(blocks[..., 0].flatten(1), coarse)


@pytest.mark.parametrize("strategy", ["random", "blockwise"])
@pytest.mark.parametrize("mask_ratio", [0.3, 0.6, 0.75])
def test_random_and_blockwise_hide_exactly_the_ratio(strategy, mask_ratio):
    generator = SimMIMMaskGenerator(192, 4, 32, mask_ratio, strategy)  # 6x6 = 36 mask patches
    coarse = generator.coarse(32, generator=torch.Generator().manual_seed(1))
    expected = math.ceil(mask_ratio * 36)  # 0.3 -> 11, 0.6 -> 22, 0.75 -> 27
    assert coarse.sum(dim=1).tolist() == [expected] * 32
    # pixel level: each hidden mask patch hides 32 * 32 pixels
    pixels = generator.pixel_mask(4, generator=torch.Generator().manual_seed(1))
    assert pixels.shape == (4, 192, 192)
    assert pixels.sum(dim=(1, 2)).tolist() == [expected * 32 * 32] * 4


def official_mask_count(input_size: int, mask_patch_size: int, mask_ratio: float) -> int:
    """`mask_count` of microsoft/SimMIM data/data_simmim.py `MaskGenerator.__init__`, transcribed."""
    rand_size = input_size // mask_patch_size
    token_count = rand_size**2
    return int(np.ceil(token_count * mask_ratio))


@pytest.mark.parametrize("strategy", ["random", "blockwise"])
@pytest.mark.parametrize(
    "image_size,model_patch_size,mask_patch_size,expected",
    [
        (224, 16, 32, 30),  # ViT-B/16 at 224 px: ceil(0.6 * 49) = 30 (rounding would give 29)
        (192, 4, 32, 22),  # Swin at 192 px: ceil(0.6 * 36) = 22
        (224, 8, 8, 471),  # 28 x 28 mask patches: ceil(470.4) = 471 (rounding would give 470)
    ],
)
def test_published_configurations_hide_the_official_count(strategy, image_size, model_patch_size, mask_patch_size, expected):
    assert official_mask_count(image_size, mask_patch_size, 0.6) == expected
    generator = SimMIMMaskGenerator(image_size, model_patch_size, mask_patch_size, 0.6, strategy)
    coarse = generator.coarse(16, generator=torch.Generator().manual_seed(0))
    assert coarse.sum(dim=1).tolist() == [expected] * 16
    scale = (mask_patch_size // model_patch_size) ** 2
    assert generator(2, generator=torch.Generator().manual_seed(0)).sum(dim=1).tolist() == [expected * scale] * 2


@pytest.mark.parametrize("mask_ratio", [0.1, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9])
@pytest.mark.parametrize("image_size,mask_patch_size", [(192, 32), (224, 32), (224, 16), (32, 8), (160, 32)])
def test_count_matches_the_official_formula_for_every_ratio(mask_ratio, image_size, mask_patch_size):
    # Rounding up differs from rounding to nearest whenever the fractional part is below 0.5.
    side = image_size // mask_patch_size
    expected = official_mask_count(image_size, mask_patch_size, mask_ratio)
    assert simmim_num_masked_patches(side * side, mask_ratio) == expected
    generator = SimMIMMaskGenerator(image_size, mask_patch_size, mask_patch_size, mask_ratio, "random")
    assert generator.coarse(4, generator=torch.Generator().manual_seed(0)).sum(dim=1).tolist() == [expected] * 4


def test_square_mask_is_one_contiguous_square_of_the_nearest_area():
    # 6x6 grid, ratio 0.6: sqrt(21.6) = 4.65 -> side 5, 25 of 36 hidden
    masks = square_patch_mask(64, (6, 6), 0.6, generator=torch.Generator().manual_seed(2)).view(64, 6, 6)
    assert masks.sum(dim=(1, 2)).tolist() == [25] * 64
    for mask in masks:
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        assert rows.max() - rows.min() + 1 == 5 and cols.max() - cols.min() + 1 == 5
    # positions vary: all 2x2 = 4 possible top-left corners occur in 64 draws
    corners = {(int(m.any(1).nonzero()[0]), int(m.any(0).nonzero()[0])) for m in masks}
    assert corners == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_blockwise_minimum_block_scales_with_the_grid():
    assert blockwise_min_patches(196) == 16  # BEiT's value on its 14x14 grid
    assert blockwise_min_patches(36) == 3
    assert blockwise_min_patches(4) == 1


def test_masks_are_reproducible_and_vary_between_images():
    generator = SimMIMMaskGenerator(224, 16, 32, 0.6, "random")
    first = generator(8, generator=torch.Generator().manual_seed(3))
    second = generator(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert len({tuple(row.tolist()) for row in first}) == 8


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(image_size=192, model_patch_size=4, mask_patch_size=30), "mask_patch_size (30) must be a multiple"),
        (dict(image_size=224, model_patch_size=16, mask_patch_size=24), "mask_patch_size (24) must be a multiple"),
        (dict(image_size=200, model_patch_size=4, mask_patch_size=32), "image_size (200) must be divisible"),
        (dict(image_size=192, model_patch_size=4, mask_ratio=1.0), "mask_ratio"),
        (dict(image_size=192, model_patch_size=4, strategy="grid"), "mask_strategy must be one of"),
    ],
)
def test_generator_geometry_errors(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        SimMIMMaskGenerator(**kwargs)


# ----------------------------------------------------------------------------------------- AvgDist


def test_average_distance_hand_computed():
    # 3x3, only the centre visible: 4 edge pixels at distance 1, 4 corners at sqrt(2).
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = False
    assert average_distance(mask) == pytest.approx((4 * 1 + 4 * math.sqrt(2)) / 8)
    # one row: hidden, hidden, hidden, visible -> distances 3, 2, 1
    row = torch.tensor([[[True, True, True, False]]])
    assert average_distance(row) == pytest.approx(2.0)
    assert average_distance(torch.zeros(2, 4, 4, dtype=torch.bool)) == 0.0


def test_average_distance_needs_a_visible_pixel():
    with pytest.raises(ValueError, match="no visible pixel"):
        average_distance(torch.ones(1, 4, 4, dtype=torch.bool))


def _brute_force_distances(masks: torch.Tensor) -> torch.Tensor:
    distances = []
    for mask in masks:
        coordinates = torch.stack(torch.meshgrid(torch.arange(mask.shape[0]), torch.arange(mask.shape[1]),
                                                 indexing="ij"), dim=-1).double()  # (H, W, 2)
        hidden, visible = coordinates[mask], coordinates[~mask]
        distances.append(torch.cdist(hidden, visible).min(dim=1).values)
    return torch.cat(distances)


@pytest.mark.parametrize("strategy", MASK_STRATEGIES)
def test_average_distance_matches_brute_force(strategy):
    generator = SimMIMMaskGenerator(24, 2, 4, 0.6, strategy)  # 6x6 mask patches of 4x4 pixels
    masks = generator.pixel_mask(5, generator=torch.Generator().manual_seed(4))
    brute = _brute_force_distances(masks)
    fast = masked_pixel_distances(masks)
    assert torch.allclose(fast, brute, atol=1e-9)
    assert average_distance(masks) == pytest.approx(float(brute.mean()), abs=1e-9)


def test_mask_generator_average_distance_matches_pooled_brute_force_and_grows_like_the_paper():
    generator = SimMIMMaskGenerator(32, 4, 8, 0.6, "random")
    estimate = mask_generator_average_distance(
        lambda n, g: generator.coarse(n, g), grid_size=(4, 4), patch_size=8, num_masks=6, batch_size=4, seed=5)
    # the same masks, drawn with the same generator sequence, by brute force
    rng = torch.Generator().manual_seed(5)
    coarse = torch.cat([generator.coarse(4, rng), generator.coarse(2, rng)])
    pixels = upsample_patch_mask(coarse, (4, 4), 8).view(6, 32, 32)
    assert estimate == pytest.approx(float(_brute_force_distances(pixels).mean()), abs=1e-9)

    def avg_dist(mask_patch_size: int, mask_ratio: float) -> float:
        g = SimMIMMaskGenerator(192, 4, mask_patch_size, mask_ratio, "random")
        side = 192 // mask_patch_size
        return mask_generator_average_distance(lambda n, r: g.coarse(n, r), (side, side), mask_patch_size,
                                               num_masks=16, seed=0)

    # SimMIM Figure 3: AvgDist grows with the mask ratio and with the mask patch size.
    assert avg_dist(32, 0.3) < avg_dist(32, 0.6) < avg_dist(32, 0.8)
    assert avg_dist(8, 0.6) < avg_dist(16, 0.6) < avg_dist(32, 0.6)


@pytest.mark.slow
def test_docs_masking_table_is_what_the_script_computes(tmp_path):
    output = tmp_path / "masking.md"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "avg_dist_table.py"), "--output", str(output)],
                   check=True, cwd=REPO)
    assert output.read_text() == (REPO / "docs" / "masking.md").read_text()
