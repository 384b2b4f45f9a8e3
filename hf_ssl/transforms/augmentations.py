"""Augmentations per method family, built on torchvision.transforms.v2; chosen by the recipe.

- ``"light"`` (masked image modeling: SplitMask, BEiT, SimMIM, MAE): masking does the work, so
  only a mild RandomResizedCrop (scale 0.67-1, as in BEiT/SimMIM) and a horizontal flip.
- ``"simclr"`` (joint-embedding: SimCLR, Chen et al. 2020, arXiv:2002.05709; BYOL, Grill et al.
  2020): two views, each RandomResizedCrop (0.08-1) + flip + colour jitter (p=0.8) + grey-scale
  (p=0.2) + Gaussian blur; the second view is blurred less and sometimes solarized (BYOL).
- ``"multicrop"`` (DINO, Caron et al. 2021, arXiv:2104.14294): two global crops (scale 0.4-1)
  and `number_of_local_crops` small local crops (scale 0.05-0.4, 96/224 of the image side).
- ``"eval"``: resize + centre crop (kNN / linear probe / tokenizer fitting), no randomness.

Every transform takes an RGB PIL image and returns a dict of float tensors, normalised with
the run's mean/std (the values written to the image processor config). `ImageRowTransform`
turns one into the per-row transform a recipe hands to the data stream (``{role: cell}`` in,
decoded and augmented tensors out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from PIL import Image
from torchvision.transforms import v2

AugmentationName = Literal["light", "simclr", "multicrop", "eval"]
AUGMENTATIONS: tuple[str, ...] = ("light", "simclr", "multicrop", "eval")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_normalized_tensor(image_mean: Sequence[float], image_std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(image_mean), list(image_std))]


def _blur_kernel_size(image_size: int) -> int:
    """SimCLR blurs with a kernel of ~10% of the image side (odd, at least 3)."""
    kernel = max(3, int(round(image_size * 0.1)))
    return kernel if kernel % 2 == 1 else kernel + 1


# Gaussian taps further than this many sigmas from the centre are dropped (see `TruncatedGaussianBlur`).
BLUR_TRUNCATION_SIGMAS = 4


class TruncatedGaussianBlur(v2.GaussianBlur):
    """`v2.GaussianBlur` whose kernel stops at ``BLUR_TRUNCATION_SIGMAS`` sigmas of the drawn sigma.

    SimCLR / BYOL blur with a kernel of ~10% of the side (23 taps at 224 px) and sigma in
    [0.1, 2.0]: at sigma 2 the taps beyond 4 sigma hold 6e-5 of the (renormalised) weight, at
    smaller sigmas less, so cutting them changes a 0-255 image by at most 0.004 (measured at
    224 px) while the blur, the slowest step of a two-view pipeline, runs 5.4x faster (2.7 vs
    14.7 ms per 224-px image on one core). Draws sigma exactly as `v2.GaussianBlur` does, so a
    seeded pipeline makes the same random choices.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        sigma = params["sigma"][0]
        reach = 2 * math.ceil(BLUR_TRUNCATION_SIGMAS * sigma) + 1  # odd
        kernel_size = [min(side, reach) for side in self.kernel_size]
        return self._call_kernel(v2.functional.gaussian_blur, inpt, kernel_size, **params)


def simclr_blur(image_size: int) -> TruncatedGaussianBlur:
    """The SimCLR / BYOL blur at `image_size`: kernel ~10% of the side (cut at 4 sigma), sigma ~ U(0.1, 2.0)."""
    return TruncatedGaussianBlur(_blur_kernel_size(image_size), sigma=(0.1, 2.0))


def _color_distortion(image_size: int, blur_probability: float, solarize_probability: float) -> list:
    steps = [
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur_probability > 0:
        steps.append(v2.RandomApply([simclr_blur(image_size)], p=blur_probability))
    if solarize_probability > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_probability))
    return steps


class _SingleView:
    def __init__(self, pipeline: v2.Compose):
        self.pipeline = pipeline

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pipeline(image)}  # (3, H, W)


class _TwoViews:
    def __init__(self, first: v2.Compose, second: v2.Compose):
        self.first, self.second = first, second

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([self.first(image), self.second(image)])}  # (2, 3, H, W)


class _MultiCrop:
    def __init__(self, global_first: v2.Compose, global_second: v2.Compose, local: v2.Compose, number_of_local_crops: int):
        self.global_first, self.global_second, self.local = global_first, global_second, local
        self.number_of_local_crops = number_of_local_crops

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        global_crops = torch.stack([self.global_first(image), self.global_second(image)])  # (2, 3, H, W)
        local_crops = torch.stack([self.local(image) for _ in range(self.number_of_local_crops)])  # (L, 3, h, w)
        return {"global_crops": global_crops, "local_crops": local_crops}


class ImageRowTransform:
    """Per-row transform: decode the cell of `role` to RGB, then apply an image transform.

    Args:
        image_transform: ``PIL.Image -> dict[str, Tensor]`` (see `build_transform`).
        role: the input role holding the image (the recipe's `columns` key).

    Raises:
        hf_ssl.data.UndecodableImageError: the cell is not a readable image (the stream skips
            and counts the row).
    """

    def __init__(self, image_transform, role: str = "image"):
        self.image_transform = image_transform
        self.role = role

    def __call__(self, row: dict) -> dict[str, torch.Tensor]:
        from hf_ssl.data.images import decode_image

        return self.image_transform(decode_image(row[self.role]))


class RowsByRole:
    """Rename a row's columns to the recipe's input roles before its transform runs.

    Args:
        columns: ``{role: dataset column}`` (`Recipe.columns`).
        transform: the recipe's per-row transform, ``{role: cell} -> dict[str, Tensor]``.
    """

    def __init__(self, columns: dict[str, str], transform):
        self.columns = dict(columns)
        self.transform = transform

    def __call__(self, row: dict) -> dict[str, torch.Tensor]:
        return self.transform({role: row[column] for role, column in self.columns.items()})


def build_transform(
    name: AugmentationName,
    image_size: int,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    *,
    number_of_local_crops: int = 6,
    local_crop_size: int | None = None,
):
    """Return ``callable(PIL.Image) -> dict[str, Tensor]`` for augmentation `name`.

    Args:
        name: ``"light"`` -> {"pixel_values": (3, H, W)}; ``"simclr"`` -> {"pixel_values":
            (2, 3, H, W)}; ``"multicrop"`` -> {"global_crops": (2, 3, H, W), "local_crops":
            (L, 3, h, w)}; ``"eval"`` -> {"pixel_values": (3, H, W)}.
        image_size: H = W of the output (global crops for multicrop).
        image_mean, image_std: per-channel normalisation.
        number_of_local_crops: L for multicrop (DINO uses 6-10).
        local_crop_size: h = w of local crops; default 96/224 of `image_size`.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {name!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    normalize = _to_normalized_tensor(image_mean, image_std)
    bicubic = v2.InterpolationMode.BICUBIC
    flip = v2.RandomHorizontalFlip(p=0.5)

    if name == "eval":
        # The usual 224/256 centre-crop ratio.
        resize_size = int(round(image_size * 256 / 224))
        return _SingleView(v2.Compose([v2.Resize(resize_size, interpolation=bicubic), v2.CenterCrop(image_size), *normalize]))
    if name == "light":
        crop = v2.RandomResizedCrop(image_size, scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3), interpolation=bicubic)
        return _SingleView(v2.Compose([crop, flip, *normalize]))
    if name == "simclr":
        crop = v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=bicubic)
        first = v2.Compose([crop, flip, *_color_distortion(image_size, 1.0, 0.0), *normalize])
        second = v2.Compose([crop, flip, *_color_distortion(image_size, 0.1, 0.2), *normalize])
        return _TwoViews(first, second)
    # multicrop
    if number_of_local_crops < 0:
        raise ValueError(f"number_of_local_crops must be >= 0, got {number_of_local_crops}")
    local_crop_size = local_crop_size or max(1, int(round(image_size * 96 / 224)))
    global_crop = v2.RandomResizedCrop(image_size, scale=(0.4, 1.0), interpolation=bicubic)
    local_crop = v2.RandomResizedCrop(local_crop_size, scale=(0.05, 0.4), interpolation=bicubic)
    global_first = v2.Compose([global_crop, flip, *_color_distortion(image_size, 1.0, 0.0), *normalize])
    global_second = v2.Compose([global_crop, flip, *_color_distortion(image_size, 0.1, 0.2), *normalize])
    local = v2.Compose([local_crop, flip, *_color_distortion(local_crop_size, 0.5, 0.0), *normalize])
    return _MultiCrop(global_first, global_second, local, number_of_local_crops)
