"""Augmentations and per-row transforms, built on torchvision.transforms.v2.

One module per family: `augmentations` holds the shared pieces ("light", "simclr", "multicrop",
"eval" pipelines, `ImageRowTransform`, `RowsByRole`); a method family may add its published
pipelines in a module of its own here, which its recipe imports.
"""

from .augmentations import (
    AUGMENTATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentationName,
    ImageRowTransform,
    RowsByRole,
    build_transform,
)

__all__ = [
    "AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentationName",
    "ImageRowTransform",
    "RowsByRole",
    "build_transform",
]
