"""Images with per-pixel masks, for segmentation fine-tuning (``hf-ssl finetune --task segmentation``):
a folder of images and PNG masks, any `datasets` dataset with an image and a mask column, or the
bundled digit scenes.

A mask is a single-channel image (PNG mode L, P or I) of class indices: 0 the background, 1 ... K-1
the classes, 255 an unlabelled pixel (no loss, no score). The folder layout::

    my-data/
      images/   0001.jpg  0002.png  ...
      masks/    0001.png  0002.png  ...     (the image's file name stem, .png)
      classes.txt                           (optional: line k names class k, background first)

or the same ``images/`` + ``masks/`` pair under ``train/`` and ``test/``. Data without a test split
has a seeded fifth of its images held out as the test split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from .default import SCENES_VARIANT, bundled_variant, load_default_dataset

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
CLASS_NAMES_FILE = "classes.txt"
HELD_OUT_FRACTION = 0.2
BUNDLED_CLASS_NAMES = ("background", *(f"digit {digit}" for digit in range(10)))


@dataclass(frozen=True)
class SegmentationSplits:
    """Train and test images with their masks.

    Args:
        train, test: datasets with `image_column` and `mask_column` (decoded to PIL images).
        image_column, mask_column: the two columns' names.
        class_names: line k names class k, where the data says (``classes.txt``, the bundled scenes).
        description: where the images come from, for plans and cards.
        held_out: True when the test split was held out of the only split the data has.
    """

    train: datasets.Dataset
    test: datasets.Dataset
    image_column: str
    mask_column: str
    class_names: tuple[str, ...] | None
    description: str
    held_out: bool


def is_image_mask_folder(path: str | os.PathLike) -> bool:
    """True for a folder laid out as the module docstring says (``images/`` + ``masks/``, flat or per split)."""
    folder = Path(path)
    return any((root / "images").is_dir() and (root / "masks").is_dir() for root in (folder, folder / "train"))


def _folder_split(folder: Path) -> datasets.Dataset:
    """``{"image", "mask"}`` rows of one ``images/`` + ``masks/`` pair, sorted by file name."""
    images_folder, masks_folder = folder / "images", folder / "masks"
    images = sorted(path for path in images_folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{images_folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    masks = {path.stem: path for path in masks_folder.iterdir() if path.suffix.lower() == ".png"}
    unmatched = [path.name for path in images if path.stem not in masks]
    if unmatched:
        raise ValueError(f"{len(unmatched)} of {len(images)} images in {images_folder} have no mask in {masks_folder} "
                         f"(first: {unmatched[0]}; its mask would be {Path(unmatched[0]).stem}.png)")
    rows = {"image": [str(path) for path in images], "mask": [str(masks[path.stem]) for path in images]}
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).cast_column("mask", datasets.Image())


def _class_names_file(folder: Path) -> tuple[str, ...] | None:
    path = folder / CLASS_NAMES_FILE
    if not path.is_file():
        return None
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return names or None


def _load_split(source: str, split: str) -> datasets.Dataset | None:
    """One split of a ``save_to_disk`` folder or a `datasets` name; None when the data has no such split."""
    if Path(source).is_dir() and (Path(source) / "dataset_dict.json").is_file():
        splits = datasets.load_from_disk(source)
        return splits[split] if split in splits else None
    if Path(source).is_dir() and (Path(source) / "dataset_info.json").is_file():
        return datasets.load_from_disk(source) if split == "train" else None
    try:
        return datasets.load_dataset(source, split=split)
    except ValueError as error:  # datasets: 'Unknown split "test". Should be one of ['train'].'
        if "split" in str(error).lower():
            return None
        raise


def load_segmentation_splits(data: str | None = None, image_column: str = "image", mask_column: str = "mask",
                             train_split: str = "train", test_split: str = "test", max_samples: int | None = None,
                             seed: int = 0) -> SegmentationSplits:
    """The train and test images and masks of `data` (see the module docstring).

    Args:
        data: None or a bundled name (the digit scenes, which have masks), a folder in the layout
            above, a ``save_to_disk`` folder, or a `datasets` name / Hub id.
        max_samples: cap on images per split (quick checks).
        seed: seed of the held-out fifth.

    Raises:
        ValueError: one line: no masks, a missing column, images without masks, no split named `train_split`.
    """
    variant = bundled_variant(data)
    class_names, held_out = None, False
    if variant is not None:
        if variant != SCENES_VARIANT:
            raise ValueError(f"the bundled {data!r} have no masks; the bundled digit-scenes do")
        train, test = (load_default_dataset(split, variant=variant, with_masks=True) for split in ("train", "test"))
        image_column, mask_column, class_names = "image", "mask", BUNDLED_CLASS_NAMES
        description = "the bundled digit scenes"
    elif is_image_mask_folder(data):
        folder = Path(data)
        image_column, mask_column = "image", "mask"
        class_names = _class_names_file(folder)
        if (folder / "train" / "images").is_dir():
            train = _folder_split(folder / "train")
            test = _folder_split(folder / "test") if (folder / "test" / "images").is_dir() else None
        else:
            train, test = _folder_split(folder), None
        description = f"the images and masks of {folder}"
    else:
        train = _load_split(str(data), train_split)
        if train is None:
            raise ValueError(f"{data} has no split {train_split!r} (--train_split)")
        test = _load_split(str(data), test_split)
        description = str(data)
        for column in (image_column, mask_column):
            for name, split in (("train", train), ("test", test)):
                if split is not None and column not in split.column_names:
                    raise ValueError(f"{data} {name} split has no column {column!r} (columns: {split.column_names}); "
                                     f"name the images' and masks' columns with --image_column / --mask_column")
    if test is None:
        parts = train.train_test_split(test_size=HELD_OUT_FRACTION, seed=seed)
        train, test, held_out = parts["train"], parts["test"], True
    if max_samples is not None:
        train, test = (split.select(range(min(max_samples, len(split)))) for split in (train, test))
    return SegmentationSplits(train.select_columns([image_column, mask_column]), test.select_columns([image_column, mask_column]),
                              image_column, mask_column, class_names, description, held_out)


__all__ = ["BUNDLED_CLASS_NAMES", "SegmentationSplits", "is_image_mask_folder", "load_segmentation_splits"]
