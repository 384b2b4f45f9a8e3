"""Mask generators: SplitMask's split, BEiT's block-wise / random masks."""

from .blockwise import beit_mask, blockwise_patch_mask, random_patch_mask
from .split import random_split_mask, split_indices

__all__ = ["beit_mask", "blockwise_patch_mask", "random_patch_mask", "random_split_mask", "split_indices"]
