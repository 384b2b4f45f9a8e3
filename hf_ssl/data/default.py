"""The bundled default data: scikit-learn's handwritten digits, plain or placed in cluttered scenes.

scikit-learn ships the 1,797 8x8 grey digits (UCI optdigits test set) inside the package, so
the default pre-training run and the tests need no network. Both variants share one fixed
train/test split (a seeded permutation: 1,438 train, 359 test images) and the labels 0-9.

``variant="digits"`` (the default): pixels are rescaled from 0-16 to 0-255 and each digit is
upsampled (bicubic) to a centred 32x32 RGB image, so that a ViT with 4-px patches sees an 8x8
grid. Raw pixels already solve it (kNN on centred pixels: 0.986), so it cannot tell a good
representation from a poor one.

``variant="scenes"``: the small, off-centre, target-domain collection that SplitMask is about
(El-Nouby et al. 2021, arXiv:2112.10740). Scene ``i`` is made from digit ``i`` on a black
48x48 canvas, with a generator seeded by ``(SCENES_SEED, i)`` so that every scene is the same
on every machine and independent of the others:

1. one or two distractor fragments: another digit of the *same split* (so no test digit leaks
   into a training image) is upsampled (bicubic) to a side drawn from 24-32 px, a rectangle
   30-50 % of that side in each direction is cut out of it at a random place and pasted at a
   random place on the canvas (pixel-wise maximum, strokes are bright on black);
2. the labelled digit, upsampled (bicubic) to a side drawn from 24-32 px, pasted whole at a
   random position inside the canvas (pixel-wise maximum), so its centre moves up to 12 px
   from the canvas centre;
3. one or two straight lines between uniformly drawn end points, 1-2 px wide, grey level
   128-255, drawn over everything (they occlude the digit where they cross it).

The canvas is converted to RGB (and resized, bicubic, when ``image_size`` is not 48). Every scene
also has a segmentation mask (column "mask", a grey PNG of the image's size, resized nearest):
``label + 1`` on the labelled digit's stroke pixels, 0 everywhere else, the distractor fragments
and the lines included. A stroke pixel is one where the upsampled digit is at least
`MASK_STROKE_LEVEL` (64 of 255) and at least as bright as the fragments under it, and no line
is drawn over it: the pixels where the image shows the labelled digit. So the mask has 11
classes (0 background, 1-10 the digits 0-9), and segmenting it means telling the digit from the
fragments of other digits around it, not only bright from dark. Raw
centred pixels reach kNN 0.524 on it (k=20, T=0.07, cosine; `hf_ssl.eval.baselines`), while a
small supervised CNN (three 3x3 conv layers of 32/64/128 channels, global max pooling, AdamW
3e-3, batch 64) trained on the 1,438 training scenes reaches 0.889 test accuracy after 5
epochs and 0.961 after 10: the labels are learnable, pixels are not enough.
"""

from __future__ import annotations

import functools
from typing import Literal

import datasets
import numpy as np
from PIL import Image, ImageDraw

DIGITS_DATASET_NAME = "digits"
DIGITS_IMAGE_SIZE = 32
SCENES_VARIANT = "scenes"
SCENES_DATASET_NAME = "digit-scenes"
# What a run or an evaluation without --dataset_name reads: the scenes, where learning matters.
DEFAULT_DATASET_NAME = SCENES_DATASET_NAME
SCENES_IMAGE_SIZE = 48
SCENES_SEED = 0
DEFAULT_VARIANTS = ("digits", SCENES_VARIANT)
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0
# Scene geometry, in pixels of the 48-px canvas (see the module docstring).
_DIGIT_SIDE_RANGE = (24, 32)
_FRAGMENT_COUNT_RANGE = (1, 2)
_FRAGMENT_FRACTION_RANGE = (0.3, 0.5)
_LINE_COUNT_RANGE = (1, 2)
_LINE_WIDTH_RANGE = (1, 2)
_LINE_GREY_RANGE = (128, 255)
# Upsampled digit values below this are its bicubic halo, not its stroke (mask, module docstring).
MASK_STROKE_LEVEL = 64
SCENE_MASK_CLASSES = 11  # background and the ten digits (mask value = label + 1)

Split = Literal["train", "test", "all"]
Variant = Literal["digits", "scenes"]

# Caption column for image-text methods (the dual encoder): every image gets its class in several
# phrasings, numerals and words, so that training sees varied text and zero-shot prompts are not
# verbatim copies of a training caption.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a photo of the digit {word}",
    "a handwritten {numeral}",
    "the number {word}",
    "a picture of a {numeral}",
    "a low-resolution scan of the digit {numeral}",
    "a blurry handwritten {word}",
)


def digit_captions(label: int) -> list[str]:
    """Every caption phrasing of digit `label` ("a photo of the digit three", "a handwritten 3", ...)."""
    return [template.format(word=DIGIT_WORDS[label], numeral=label) for template in CAPTION_TEMPLATES]


def _digit_pixels() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits rescaled to 0-255, ``(N, 8, 8)`` uint8, and their labels ``(N,)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (N, 8, 8)
    return pixels, digits.target.astype(np.int64)


def _upsample(pixels: np.ndarray, side: int) -> np.ndarray:
    """A grey ``(8, 8)`` uint8 digit upsampled (bicubic) to ``(side, side)`` uint8."""
    return np.asarray(Image.fromarray(pixels, mode="L").resize((side, side), Image.Resampling.BICUBIC))


def _digit_images(image_size: int) -> tuple[list[Image.Image], np.ndarray]:
    pixels, labels = _digit_pixels()
    images = [Image.fromarray(_upsample(array, image_size), mode="L").convert("RGB") for array in pixels]
    return images, labels


def split_indices(number_of_images: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed ``(train, test)`` index arrays (sorted) shared by every variant."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(number_of_images)
    number_of_test = int(round(number_of_images * _TEST_FRACTION))
    return np.sort(order[number_of_test:]), np.sort(order[:number_of_test])


def _paste_maximum(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    height, width = patch.shape
    region = canvas[top : top + height, left : left + width]
    np.maximum(region, patch, out=region)


def _render_scene(index: int, pixels: np.ndarray, label: int, same_split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scene `index` (its digit `label`) and its mask, two ``(48, 48)`` uint8 arrays; `same_split`
    lists the digits of its split."""
    generator = np.random.default_rng([SCENES_SEED, index])
    canvas = np.zeros((SCENES_IMAGE_SIZE, SCENES_IMAGE_SIZE), dtype=np.uint8)
    own_position = int(np.searchsorted(same_split, index))
    for _ in range(generator.integers(_FRAGMENT_COUNT_RANGE[0], _FRAGMENT_COUNT_RANGE[1] + 1)):
        # Any digit of the split but this scene's own one.
        other = int(generator.integers(len(same_split) - 1))
        other = int(same_split[other + 1 if other >= own_position else other])
        side = int(generator.integers(_DIGIT_SIDE_RANGE[0], _DIGIT_SIDE_RANGE[1] + 1))
        source = _upsample(pixels[other], side)
        height, width = (max(2, int(round(side * generator.uniform(*_FRAGMENT_FRACTION_RANGE)))) for _ in range(2))
        top, left = int(generator.integers(side - height + 1)), int(generator.integers(side - width + 1))
        fragment = source[top : top + height, left : left + width]
        _paste_maximum(canvas, fragment, int(generator.integers(SCENES_IMAGE_SIZE - height + 1)),
                       int(generator.integers(SCENES_IMAGE_SIZE - width + 1)))
    side = int(generator.integers(_DIGIT_SIDE_RANGE[0], _DIGIT_SIDE_RANGE[1] + 1))
    top, left = (int(generator.integers(SCENES_IMAGE_SIZE - side + 1)) for _ in range(2))
    digit = _upsample(pixels[index], side)
    under = canvas[top : top + side, left : left + side]
    stroke = np.zeros_like(canvas, dtype=bool)
    stroke[top : top + side, left : left + side] = (digit >= MASK_STROKE_LEVEL) & (digit >= under)
    _paste_maximum(canvas, digit, top, left)
    image = Image.fromarray(canvas, mode="L")
    lines = Image.new("L", image.size)
    draw, draw_coverage = ImageDraw.Draw(image), ImageDraw.Draw(lines)
    for _ in range(generator.integers(_LINE_COUNT_RANGE[0], _LINE_COUNT_RANGE[1] + 1)):
        end_points = [tuple(generator.uniform(0, SCENES_IMAGE_SIZE, 2)) for _ in range(2)]
        grey = int(generator.integers(_LINE_GREY_RANGE[0], _LINE_GREY_RANGE[1] + 1))
        width = int(generator.integers(_LINE_WIDTH_RANGE[0], _LINE_WIDTH_RANGE[1] + 1))
        draw.line(end_points, fill=grey, width=width)
        draw_coverage.line(end_points, fill=255, width=width)
    mask = np.where(stroke & (np.asarray(lines) == 0), np.uint8(label + 1), np.uint8(0))
    return np.asarray(image), mask


@functools.lru_cache(maxsize=1)
def _scene_canvases() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All scenes ``(N, 48, 48)`` uint8, their masks ``(N, 48, 48)`` uint8 and labels ``(N,)``;
    read-only, rendered once per process."""
    pixels, labels = _digit_pixels()
    train, test = split_indices(len(pixels))
    split_of = np.zeros(len(pixels), dtype=bool)
    split_of[test] = True
    rendered = [_render_scene(index, pixels, int(labels[index]), test if split_of[index] else train)
                for index in range(len(pixels))]
    canvases, masks = (np.stack(arrays) for arrays in zip(*rendered))
    for array in (canvases, masks):
        array.flags.writeable = False
    return canvases, masks, labels


def _scene_images(image_size: int) -> tuple[list[Image.Image], list[Image.Image], np.ndarray]:
    canvases, masks, labels = _scene_canvases()
    images, mask_images = [], []
    for canvas, mask in zip(canvases, masks):
        image, mask_image = Image.fromarray(canvas, mode="L"), Image.fromarray(mask, mode="L")
        if image_size != SCENES_IMAGE_SIZE:
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            mask_image = mask_image.resize((image_size, image_size), Image.Resampling.NEAREST)
        images.append(image.convert("RGB"))
        mask_images.append(mask_image)
    return images, mask_images, labels


def load_default_dataset(
    split: Split = "train", image_size: int | None = None, variant: Variant = "digits", with_masks: bool = False
) -> datasets.Dataset:
    """Return the bundled data as a `datasets.Dataset` with columns "image" (PIL RGB), "label",
    "caption" (a list of phrasings of the label, `digit_captions`) and, for the scenes with
    `with_masks`, "mask" (PIL grey, ``label + 1`` on the digit's stroke pixels, 0 elsewhere; see the
    module docstring). Training reads the data without masks: with the mask column in the dataset,
    a 2-process run's DataLoader workers kept the processes from exiting after the run.

    Args:
        split: "train" (80%, 1,438 images), "test" (20%, 359 images) or "all" (1,797); the
            split is a fixed random permutation, the same on every machine and for both variants.
        image_size: side of the square images; default 32 for "digits", 48 for "scenes".
        variant: "digits" (centred digits) or "scenes" (digits at random positions and scales
            with distractor fragments and lines; see the module docstring).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be one of ('train', 'test', 'all'), got {split!r}")
    if variant not in DEFAULT_VARIANTS:
        raise ValueError(f"variant must be one of {DEFAULT_VARIANTS}, got {variant!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    masks = None
    if variant == "digits":
        images, labels = _digit_images(image_size or DIGITS_IMAGE_SIZE)
    else:
        images, masks, labels = _scene_images(image_size or SCENES_IMAGE_SIZE)
    train, test = split_indices(len(images))
    order = {"train": train, "test": test, "all": np.arange(len(images))}[split]
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(digit) for digit in range(10)]),
                "caption": datasets.List(datasets.Value("string"))}
    columns = {"image": [images[i] for i in order], "label": [int(labels[i]) for i in order],
               "caption": [digit_captions(int(labels[i])) for i in order]}
    if masks is not None and with_masks:
        features["mask"] = datasets.Image()
        columns["mask"] = [masks[i] for i in order]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# The names a run or an evaluation uses for the bundled data (``--dataset_name``), by variant.
BUNDLED_DATASET_NAMES = {DIGITS_DATASET_NAME: "digits", SCENES_DATASET_NAME: SCENES_VARIANT}
BUNDLED_DATASET_LABELS = {
    "digits": "hf-ssl bundled digits (scikit-learn)",
    SCENES_VARIANT: "hf-ssl bundled digit scenes (off-centre digits among distractors, from scikit-learn's digits)",
}


def bundled_variant(dataset_name: str | None) -> str | None:
    """The bundled variant a dataset name means (no name: `DEFAULT_DATASET_NAME`'s, the scenes); None
    for any other data."""
    if dataset_name in (None, "", "default", "bundled"):
        dataset_name = DEFAULT_DATASET_NAME
    return BUNDLED_DATASET_NAMES.get(dataset_name)


def bundled_image_size(variant: str) -> int:
    """The side a bundled variant is drawn at (digits 32 px, scenes 48 px)."""
    return SCENES_IMAGE_SIZE if variant == SCENES_VARIANT else DIGITS_IMAGE_SIZE
