"""DINO's published multi-crop augmentation (``DataAugmentationDINO``), on torchvision.transforms.v2.

DINO, Caron et al. 2021, arXiv:2104.14294; follows facebookresearch/dino main_dino.py
``DataAugmentationDINO`` and utils.py ``GaussianBlur`` / ``Solarization``:

- two global crops: RandomResizedCrop(224, scale 0.4-1, bicubic), flip, colour jitter
  (0.4, 0.4, 0.2, 0.1; p=0.8), grey-scale (p=0.2), then Gaussian blur with p=1.0 (first crop) or
  p=0.1 + solarization p=0.2 (second crop);
- `number_of_local_crops` local crops (official ``--local_crops_number 8``): RandomResizedCrop(96,
  scale 0.05-0.4, bicubic), the same flip and colour jitter, blur with p=0.5;
- the blur is PIL's ``ImageFilter.GaussianBlur(radius)`` with radius ~ U(0.1, 2.0) px at every
  crop size, as in the official code.

It differs from ``build_transform("multicrop", ...)`` in `hf_ssl.transforms.augmentations` in three
ways that matter for DINO's flags and fidelity: the crop scales are arguments
(``--global_crops_scale``, ``--local_crops_scale``), the blur is PIL's untruncated Gaussian with
the official radius (that one cuts torchvision's kernel at ~10% of the crop side, 11 px at
96 px, and at 4 sigma), and zero local crops leave out the ``local_crops`` key. Randomness comes from torch's
generator, so ``torch.manual_seed`` makes a crop reproducible (the official code mixes in
Python's ``random``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from .augmentations import IMAGENET_MEAN, IMAGENET_STD

GLOBAL_CROP_SIZE = 224
LOCAL_CROP_SIZE = 96
BLUR_RADIUS = (0.1, 2.0)


class RandomGaussianBlur:
    """PIL Gaussian blur with probability `probability` and radius ~ U(`radius`) (official ``utils.GaussianBlur``).

    Args:
        probability: chance of blurring, in [0, 1].
        radius: ``(min, max)`` of the blur's standard deviation in pixels.
    """

    def __init__(self, probability: float, radius: tuple[float, float] = BLUR_RADIUS):
        self.probability = probability
        self.radius = radius

    def __call__(self, image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        if torch.rand(()).item() >= self.probability:
            return image
        low, high = self.radius
        blur = ImageFilter.GaussianBlur(radius=low + (high - low) * torch.rand(()).item())
        if isinstance(image, torch.Tensor):  # a uint8 (3, H, W) image from torchvision.io: the same PIL blur
            return v2.functional.pil_to_tensor(v2.functional.to_pil_image(image).filter(blur))
        return image.filter(blur)


def proportional_local_crop_size(image_size: int, multiple_of: int = 1) -> int:
    """DINO's local crop side at another global size: ``image_size * 96 / 224``, rounded to a
    multiple of `multiple_of` (a ViT's patch size, so the crop is whole patches), at least one.

    224 -> 96 (patch 16), 32 -> 16 (patch 8), 96 -> 48 (patch 16).
    """
    if image_size < 1 or multiple_of < 1:
        raise ValueError(f"image_size and multiple_of must be >= 1, got {image_size} and {multiple_of}")
    side = image_size * LOCAL_CROP_SIZE / GLOBAL_CROP_SIZE
    return max(multiple_of, int(round(side / multiple_of)) * multiple_of)


def _check_scale(name: str, scale: Sequence[float]) -> tuple[float, float]:
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"{name} must be two numbers 0 < min <= max <= 1, got {tuple(scale)}")
    return float(scale[0]), float(scale[1])


class DINOMultiCrop:
    """``PIL.Image -> {"global_crops": (2, 3, H, W), "local_crops": (L, 3, h, w)}`` as DINO makes them.

    Args:
        image_size: side H = W of the global crops (official 224).
        local_crop_size: side h = w of the local crops (official 96).
        number_of_local_crops: L (official default 8; 0 disables multi-crop and drops the key).
        global_crops_scale: area range of the global crops (official 0.4-1).
        local_crops_scale: area range of the local crops (official 0.05-0.4).
        image_mean, image_std: per-channel normalisation (official: ImageNet's).
        blur_radius: ``(min, max)`` blur radius in pixels (official 0.1-2.0).
    """

    def __init__(
        self,
        image_size: int = GLOBAL_CROP_SIZE,
        local_crop_size: int = LOCAL_CROP_SIZE,
        number_of_local_crops: int = 8,
        global_crops_scale: Sequence[float] = (0.4, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.4),
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        blur_radius: tuple[float, float] = BLUR_RADIUS,
    ):
        if image_size < 1 or local_crop_size < 1:
            raise ValueError(f"image_size and local_crop_size must be >= 1, got {image_size} and {local_crop_size}")
        if number_of_local_crops < 0:
            raise ValueError(f"number_of_local_crops must be >= 0, got {number_of_local_crops}")
        if not 0 <= blur_radius[0] <= blur_radius[1]:
            raise ValueError(f"blur_radius must be 0 <= min <= max, got {tuple(blur_radius)}")
        global_crops_scale = _check_scale("global_crops_scale", global_crops_scale)
        local_crops_scale = _check_scale("local_crops_scale", local_crops_scale)
        self.number_of_local_crops = number_of_local_crops
        bicubic = v2.InterpolationMode.BICUBIC
        flip_and_color_jitter = [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(image_mean), list(image_std))]
        global_crop = v2.RandomResizedCrop(image_size, scale=global_crops_scale, interpolation=bicubic)
        self.global_first = v2.Compose(
            [global_crop, *flip_and_color_jitter, RandomGaussianBlur(1.0, blur_radius), *normalize]
        )
        self.global_second = v2.Compose(
            [global_crop, *flip_and_color_jitter, RandomGaussianBlur(0.1, blur_radius),
             v2.RandomSolarize(threshold=128, p=0.2), *normalize]
        )
        self.local = v2.Compose([
            v2.RandomResizedCrop(local_crop_size, scale=local_crops_scale, interpolation=bicubic),
            *flip_and_color_jitter, RandomGaussianBlur(0.5, blur_radius), *normalize,
        ])

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        crops = {"global_crops": torch.stack([self.global_first(image), self.global_second(image)])}  # (2, 3, H, W)
        if self.number_of_local_crops:
            crops["local_crops"] = torch.stack([self.local(image) for _ in range(self.number_of_local_crops)])  # (L, 3, h, w)
        return crops


__all__ = ["BLUR_RADIUS", "DINOMultiCrop", "RandomGaussianBlur", "proportional_local_crop_size"]
