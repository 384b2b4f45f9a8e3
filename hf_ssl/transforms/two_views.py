"""The published two-view augmentations of the joint-embedding methods, on torchvision.transforms.v2.

Each view is RandomResizedCrop (bicubic) -> horizontal flip (p=0.5) -> colour jitter (with
probability p, in random order) -> grey-scale -> Gaussian blur (sigma in [0.1, 2.0], kernel ~10% of
the side) -> solarize (threshold 128 of 255), then normalisation. What differs between methods:

========== =============================== ========== ====================== ====== ===== ============ ================
pipeline   methods                         crop scale jitter (b, c, s, h)    jitter grey  blur v1 / v2 solarize v1 / v2
========== =============================== ========== ====================== ====== ===== ============ ================
"simclr"   SimCLR                          0.08 - 1   0.8, 0.8, 0.8, 0.2     0.8    0.2   0.5 / 0.5    0 / 0
"byol"     BYOL, MoCo v3, Barlow, VICReg   0.08 - 1   0.4, 0.4, 0.2, 0.1     0.8    0.2   1.0 / 0.1    0 / 0.2
"simsiam"  SimSiam (MoCo v2's)             0.2 - 1    0.4, 0.4, 0.4, 0.1     0.8    0.2   0.5 / 0.5    0 / 0
========== =============================== ========== ====================== ====== ===== ============ ================

Sources (read in the official code):

- SimCLR (Chen et al. 2020, arXiv:2002.05709, appendix A): google-research/simclr tf2/data_util.py
  ``color_jitter`` (0.8 * strength for brightness / contrast / saturation, 0.2 * strength for hue,
  run.py ``--color_jitter_strength 1.0``), ``random_color_jitter`` (p=0.8, grey-scale p=0.2),
  ``batch_random_blur`` (p=0.5 on each view, kernel ``height // 10``), ``crop_and_resize`` (area
  0.08-1, aspect 3/4-4/3, bicubic). No solarize. lightly's ``SimCLRTransform`` has the same values.
- BYOL (Grill et al. 2020, arXiv:2006.07733, Table 6): deepmind-research byol/utils/augmentations.py
  ``augment_config`` (view1 blur 1.0 / solarize 0.0, view2 blur 0.1 / solarize 0.2, jitter 0.4 /
  0.4 / 0.2 / 0.1 with p=0.8, grey-scale 0.2, kernel = side / 10). BYOL's brightness jitter is
  additive, torchvision's multiplicative.
- MoCo v3 (Chen, Xie, He 2021, arXiv:2104.02057): facebookresearch/moco-v3 main_moco.py
  ``augmentation1`` / ``augmentation2`` are BYOL's; ``--crop-min`` is 0.08 (the ViT setting; its
  CONFIG.md trains ResNet-50 with ``--crop-min=.2``).
- Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): facebookresearch/barlowtwins main.py
  ``Transform`` (BYOL's, bicubic crops). VICReg (Bardes et al. 2021, arXiv:2105.04906):
  facebookresearch/vicreg augmentations.py ``TrainTransform`` (BYOL's, bicubic crops).
- SimSiam (Chen & He 2020, arXiv:2011.10566): facebookresearch/simsiam main_simsiam.py, MoCo v2's
  augmentation: crop scale 0.2-1, jitter 0.4 / 0.4 / 0.4 / 0.1 (p=0.8), grey-scale 0.2, blur p=0.5,
  the same pipeline for both views.

`hf_ssl.transforms.build_transform("simclr", ...)` is BYOL's pipeline under SimCLR's name: SimCLR's
own colour jitter is twice as strong, it blurs each view half of the time and never solarizes.
The PyTorch codes blur with PIL (radius sigma, no kernel bound); here the kernel is ~10% of the
side as in the TensorFlow / JAX codes, cut at 4 sigma (`TruncatedGaussianBlur`: the same image
within 0.004 of 255, 5.4x faster).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torchvision.transforms import v2

from .augmentations import IMAGENET_MEAN, IMAGENET_STD, _to_normalized_tensor, _TwoViews, simclr_blur

TwoViewPipelineName = Literal["simclr", "byol", "simsiam"]


@dataclass(frozen=True)
class ViewAugmentation:
    """The photometric augmentations of one view.

    Args:
        color_jitter: (brightness, contrast, saturation, hue) ranges of torchvision's ColorJitter.
        color_jitter_probability: probability of applying the jitter.
        grayscale_probability: probability of converting to grey (3 channels kept).
        blur_probability: probability of a Gaussian blur (sigma uniform in [0.1, 2.0]).
        solarize_probability: probability of inverting pixels above 128.
    """

    color_jitter: tuple[float, float, float, float]
    color_jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    blur_probability: float = 0.0
    solarize_probability: float = 0.0


@dataclass(frozen=True)
class TwoViewPipeline:
    """A published two-view pipeline: the crop scale range and each view's augmentations."""

    crop_scale: tuple[float, float]
    first: ViewAugmentation
    second: ViewAugmentation


_SIMCLR_VIEW = ViewAugmentation(color_jitter=(0.8, 0.8, 0.8, 0.2), blur_probability=0.5)
_BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
_SIMSIAM_VIEW = ViewAugmentation(color_jitter=(0.4, 0.4, 0.4, 0.1), blur_probability=0.5)

TWO_VIEW_PIPELINES: dict[str, TwoViewPipeline] = {
    "simclr": TwoViewPipeline(crop_scale=(0.08, 1.0), first=_SIMCLR_VIEW, second=_SIMCLR_VIEW),
    "byol": TwoViewPipeline(
        crop_scale=(0.08, 1.0),
        first=ViewAugmentation(color_jitter=_BYOL_JITTER, blur_probability=1.0),
        second=ViewAugmentation(color_jitter=_BYOL_JITTER, blur_probability=0.1, solarize_probability=0.2),
    ),
    "simsiam": TwoViewPipeline(crop_scale=(0.2, 1.0), first=_SIMSIAM_VIEW, second=_SIMSIAM_VIEW),
}


def _view_pipeline(
    view: ViewAugmentation, image_size: int, crop_scale: tuple[float, float], normalize: list
) -> v2.Compose:
    brightness, contrast, saturation, hue = view.color_jitter
    steps = [
        v2.RandomResizedCrop(image_size, scale=crop_scale, interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=view.color_jitter_probability),
        v2.RandomGrayscale(p=view.grayscale_probability),
    ]
    if view.blur_probability > 0:
        blur = simclr_blur(image_size)
        steps.append(v2.RandomApply([blur], p=view.blur_probability))
    if view.solarize_probability > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=view.solarize_probability))
    return v2.Compose([*steps, *normalize])


def two_view_transform(
    name: TwoViewPipelineName,
    image_size: int,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    *,
    crop_scale: tuple[float, float] | None = None,
):
    """``callable(PIL.Image) -> {"pixel_values": (2, 3, H, W)}`` with a published pipeline.

    Args:
        name: ``"simclr"``, ``"byol"`` or ``"simsiam"`` (see the module docstring).
        image_size: H = W of both views.
        image_mean, image_std: per-channel normalisation.
        crop_scale: (min, max) area fraction of the random crops; None keeps the pipeline's.
    """
    if name not in TWO_VIEW_PIPELINES:
        raise ValueError(f"name must be one of {tuple(TWO_VIEW_PIPELINES)}, got {name!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    pipeline = TWO_VIEW_PIPELINES[name]
    crop_scale = pipeline.crop_scale if crop_scale is None else tuple(crop_scale)
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {crop_scale}")
    normalize = _to_normalized_tensor(image_mean, image_std)
    first = _view_pipeline(pipeline.first, image_size, crop_scale, normalize)
    second = _view_pipeline(pipeline.second, image_size, crop_scale, normalize)
    return _TwoViews(first, second)


__all__ = ["TWO_VIEW_PIPELINES", "TwoViewPipeline", "TwoViewPipelineName", "ViewAugmentation", "two_view_transform"]
