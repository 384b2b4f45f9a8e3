"""The published augmentations of the masked-image-modeling methods: one view per image.

Masking does most of the work, so each method crops and flips, with its own crop range:

- MAE (He et al. 2021, arXiv:2111.06377; facebookresearch/mae main_pretrain.py): random resized
  crop, scale 0.2-1, bicubic, plus a horizontal flip.
- BEiT (Bao et al. 2021, arXiv:2106.08254; microsoft/unilm beit/datasets.py,
  `DataAugmentationForBEiT`): colour jitter 0.4 (brightness, contrast, saturation, always applied),
  a horizontal flip, then a random resized crop, scale 0.08-1, bicubic (``--train_interpolation``).
  hf-ssl flips after cropping, as MAE and SimMIM do: the crop's position is symmetric, so the two
  orders draw the same distribution of views.
- SimMIM (Xie et al. 2021, arXiv:2111.09886; microsoft/SimMIM data/data_simmim.py,
  `SimMIMTransform`): random resized crop, scale 0.67-1, torchvision's default bilinear, plus a
  horizontal flip.
- SplitMask (El-Nouby et al. 2021, arXiv:2112.10740): the SplitMask paper names no augmentation and the
  method builds on BEiT's code, so it takes BEiT's.

Every crop draws its aspect ratio in [3/4, 4/3]. A recipe picks one `MaskedImageAugmentation` and
builds its per-row transform with `build_masked_image_transform`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2

from .augmentations import IMAGENET_MEAN, IMAGENET_STD

INTERPOLATIONS = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}


@dataclass(frozen=True)
class MaskedImageAugmentation:
    """One method's augmentation.

    Args:
        name: the method it belongs to.
        crop_scale: area range of the random resized crop, as fractions of the image.
        interpolation: ``"bicubic"`` or ``"bilinear"`` resize of the crop.
        color_jitter: brightness = contrast = saturation jitter strength applied before the crop
            (BEiT), or None.
        horizontal_flip: flip with probability 0.5.
        crop_ratio: aspect-ratio range of the crop.
        source: where these values come from.
    """

    name: str
    crop_scale: tuple[float, float]
    interpolation: str
    color_jitter: float | None = None
    horizontal_flip: bool = True
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    source: str = ""

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")

    def describe(self) -> str:
        """One line for documentation: ``RandomResizedCrop(scale 0.2-1, bicubic) + flip``."""
        steps = [f"ColorJitter({self.color_jitter})"] if self.color_jitter else []
        crop = f"RandomResizedCrop(scale {self.crop_scale[0]:g}-{self.crop_scale[1]:g}, {self.interpolation})"
        steps.append(crop)
        if self.horizontal_flip:
            steps.append("flip")
        return " + ".join(steps)


MAE_AUGMENTATION = MaskedImageAugmentation(
    name="mae", crop_scale=(0.2, 1.0), interpolation="bicubic",
    source="facebookresearch/mae main_pretrain.py (transform_train)",
)
BEIT_AUGMENTATION = MaskedImageAugmentation(
    name="beit", crop_scale=(0.08, 1.0), interpolation="bicubic", color_jitter=0.4,
    source="microsoft/unilm beit/datasets.py (DataAugmentationForBEiT)",
)
SIMMIM_AUGMENTATION = MaskedImageAugmentation(
    name="simmim", crop_scale=(0.67, 1.0), interpolation="bilinear",
    source="microsoft/SimMIM data/data_simmim.py (SimMIMTransform)",
)
SPLITMASK_AUGMENTATION = MaskedImageAugmentation(
    name="splitmask", crop_scale=(0.08, 1.0), interpolation="bicubic", color_jitter=0.4,
    source="BEiT's (microsoft/unilm beit/datasets.py): SplitMask builds on BEiT, the SplitMask paper names no other",
)


class MaskedImageView:
    """``PIL.Image -> {"pixel_values": (3, H, W)}``: one augmented, normalised view (picklable).

    Args:
        augmentation: the method's augmentation.
        image_size: H = W of the output.
        image_mean, image_std: per-channel normalisation.
    """

    def __init__(
        self,
        augmentation: MaskedImageAugmentation,
        image_size: int,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ):
        if image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size}")
        self.augmentation = augmentation
        steps = []
        if augmentation.color_jitter:
            strength = augmentation.color_jitter
            steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
        steps.append(v2.RandomResizedCrop(image_size, scale=augmentation.crop_scale, ratio=augmentation.crop_ratio,
                                          interpolation=INTERPOLATIONS[augmentation.interpolation]))
        if augmentation.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(image_mean), list(image_std))]
        self.pipeline = v2.Compose(steps)

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pipeline(image)}  # (3, H, W)


def build_masked_image_transform(
    augmentation: MaskedImageAugmentation,
    image_size: int,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
) -> MaskedImageView:
    """The image transform of `augmentation`: wrap it in `ImageRowTransform` for a recipe."""
    return MaskedImageView(augmentation, image_size, image_mean, image_std)


__all__ = [
    "BEIT_AUGMENTATION",
    "MAE_AUGMENTATION",
    "SIMMIM_AUGMENTATION",
    "SPLITMASK_AUGMENTATION",
    "MaskedImageAugmentation",
    "MaskedImageView",
    "build_masked_image_transform",
]
