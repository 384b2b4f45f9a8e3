"""Invariants of SplitMask's split and BEiT's masks."""

import pytest
import torch

from hf_ssl.masking import blockwise_patch_mask, random_patch_mask, random_split_mask, split_indices


@pytest.mark.parametrize("num_patches", [16, 49, 196])
def test_split_halves_are_disjoint_cover_everything_and_have_equal_size(num_patches):
    split = random_split_mask(8, num_patches, generator=torch.Generator().manual_seed(0))
    assert split.shape == (8, num_patches) and split.dtype == torch.bool
    assert torch.all(split.sum(dim=1) == num_patches // 2)
    group_a, group_b = split_indices(split)
    assert group_a.shape == (8, num_patches // 2) and group_b.shape == (8, num_patches - num_patches // 2)
    union = torch.cat([group_a, group_b], dim=1).sort(dim=1).values
    assert torch.equal(union, torch.arange(num_patches).expand(8, -1))  # covering and disjoint
    assert torch.all(split.gather(1, group_a)) and not torch.any(split.gather(1, group_b))
    assert torch.all(group_a.diff(dim=1) > 0)  # positional order kept


def test_split_is_reproducible_with_a_seed_and_varies_without():
    first = random_split_mask(4, 64, generator=torch.Generator().manual_seed(7))
    second = random_split_mask(4, 64, generator=torch.Generator().manual_seed(7))
    third = random_split_mask(4, 64, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)
    assert not torch.equal(first[0], first[1])  # each image gets its own split


def test_split_indices_with_the_known_count_gives_the_same_groups_without_reading_the_mask():
    split = random_split_mask(4, 49, generator=torch.Generator().manual_seed(3))
    read, given = split_indices(split), split_indices(split, 49 // 2)
    assert all(torch.equal(a, b) for a, b in zip(read, given))


def test_split_indices_refuses_ragged_masks():
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError, match="same number"):
        split_indices(mask)


@pytest.mark.parametrize("ratio", [0.25, 0.4, 0.6])
def test_beit_masks_hide_exactly_the_ratio(ratio):
    generator = torch.Generator().manual_seed(0)
    for mask in (blockwise_patch_mask(16, (14, 14), ratio, generator=generator), random_patch_mask(16, (14, 14), ratio, generator=generator)):
        assert mask.shape == (16, 196)
        assert torch.all(mask.sum(dim=1) == round(ratio * 196))


def test_blockwise_masks_are_blocky():
    """Hidden patches in block-wise masks have far more hidden neighbours than random ones."""

    def hidden_neighbour_fraction(mask):
        grid = mask.view(-1, 14, 14).float()
        right = (grid[:, :, 1:] * grid[:, :, :-1]).sum()
        down = (grid[:, 1:, :] * grid[:, :-1, :]).sum()
        return float((right + down) / grid.sum())

    generator = torch.Generator().manual_seed(0)
    blocky = hidden_neighbour_fraction(blockwise_patch_mask(32, (14, 14), 0.4, generator=generator))
    scattered = hidden_neighbour_fraction(random_patch_mask(32, (14, 14), 0.4, generator=generator))
    assert blocky > scattered + 0.5
