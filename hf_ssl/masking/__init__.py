"""Mask generators: SplitMask's split, BEiT's block-wise / random masks, DINOv2's iBOT masks, SimMIM's mask-patch masks,
and the AvgDist statistic of any of them."""

from .avg_dist import average_distance, mask_generator_average_distance
from .blockwise import (
    BEIT_MASK_RATIO,
    BEIT_NUM_MASKED_PATCHES,
    beit_mask,
    beit_num_masked_patches,
    blockwise_patch_mask,
    dinov2_masks,
    random_patch_mask,
)
from .simmim import SimMIMMaskGenerator
from .split import random_split_mask, split_indices

__all__ = [
    "BEIT_MASK_RATIO",
    "BEIT_NUM_MASKED_PATCHES",
    "SimMIMMaskGenerator",
    "average_distance",
    "beit_mask",
    "beit_num_masked_patches",
    "blockwise_patch_mask",
    "dinov2_masks",
    "mask_generator_average_distance",
    "random_patch_mask",
    "random_split_mask",
    "split_indices",
]
