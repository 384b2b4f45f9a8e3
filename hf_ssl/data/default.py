"""The bundled default data: scikit-learn's handwritten digits as a labelled image dataset.

scikit-learn ships the 1,797 8x8 grey digits (UCI optdigits test set) inside the package, so
the default pre-training run and the tests need no network. Images are rescaled from 0-16 to
0-255 and upsampled to 32x32 RGB so that a ViT with 4-px patches sees an 8x8 patch grid.
"""

from __future__ import annotations

from typing import Literal

import datasets
import numpy as np
from PIL import Image

DEFAULT_DATASET_NAME = "digits"
DEFAULT_IMAGE_SIZE = 32
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0

Split = Literal["train", "test", "all"]

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


def _digit_images(image_size: int) -> tuple[list[Image.Image], np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (N, 8, 8)
    images = [
        Image.fromarray(array, mode="L").resize((image_size, image_size), Image.Resampling.BICUBIC).convert("RGB")
        for array in pixels
    ]
    return images, digits.target.astype(np.int64)


def load_default_dataset(split: Split = "train", image_size: int = DEFAULT_IMAGE_SIZE) -> datasets.Dataset:
    """Return the bundled digits as a `datasets.Dataset` with columns "image" (PIL RGB), "label" and
    "caption" (a list of phrasings of the label, `digit_captions`).

    Args:
        split: "train" (80%, 1,438 images), "test" (20%, 359 images) or "all" (1,797); the
            split is a fixed random permutation, the same on every machine.
        image_size: side of the upsampled square images (32 by default).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be one of ('train', 'test', 'all'), got {split!r}")
    images, labels = _digit_images(image_size)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
    number_of_test = int(round(len(images) * _TEST_FRACTION))
    if split == "train":
        order = np.sort(order[number_of_test:])
    elif split == "test":
        order = np.sort(order[:number_of_test])
    else:
        order = np.arange(len(images))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(digit) for digit in range(10)]),
         "caption": datasets.List(datasets.Value("string"))}
    )
    return datasets.Dataset.from_dict(
        {"image": [images[i] for i in order], "label": [int(labels[i]) for i in order],
         "caption": [digit_captions(int(labels[i])) for i in order]}, features=features
    )
