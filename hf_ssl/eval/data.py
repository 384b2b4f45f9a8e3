"""The labelled images an evaluation reads: the bundled data or any `datasets` dataset with an image
and a label column, preprocessed once with the checkpoint's own image processor."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor

from hf_ssl.data.default import BUNDLED_DATASET_LABELS, bundled_variant
from hf_ssl.data.images import decode_image
from hf_ssl.training.outputs import read_training_arguments


# A mask value that marks a pixel as unlabelled (the ADE20K / Pascal VOC convention): no loss, no score.
IGNORE_INDEX = 255


def is_bundled_dataset(dataset_name: str | None) -> bool:
    """True when `dataset_name` means bundled data (None / "digits" / "digit-scenes")."""
    return bundled_variant(dataset_name) is not None


def dataset_label(dataset_name: str | None) -> str:
    """How results and cards name a dataset: a description for bundled data, else its name."""
    variant = bundled_variant(dataset_name)
    return BUNDLED_DATASET_LABELS[variant] if variant is not None else str(dataset_name)


def default_dataset_name(model_path: str | os.PathLike) -> str | None:
    """The labelled data an evaluation reads when none is named: the bundled data a run folder was
    pre-trained on (its ``training_args.json``), else None (the bundled default, the digit scenes)."""
    name = read_training_arguments(model_path).get("dataset_name")
    return name if isinstance(name, str) and is_bundled_dataset(name) else None


def load_labelled_split(
    dataset_name: str | None, split: str, image_column: str = "image", label_column: str = "label",
    max_samples: int | None = None,
) -> datasets.Dataset:
    """One split with `image_column` / `label_column`; the bundled default when `dataset_name` is None."""
    if is_bundled_dataset(dataset_name):
        from hf_ssl.data import load_default_dataset

        dataset = load_default_dataset(split, variant=bundled_variant(dataset_name), with_masks=True)
    elif Path(str(dataset_name)).is_dir() and (Path(dataset_name) / "dataset_info.json").is_file():
        dataset = datasets.load_from_disk(dataset_name)
        dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
    else:
        dataset = datasets.load_dataset(dataset_name, split=split)
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"{dataset_name or 'the default dataset'} split {split!r} has no column {column!r}; "
                             f"columns: {dataset.column_names}")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def preprocess(dataset: datasets.Dataset, image_processor, image_column: str = "image",
               label_column: str = "label", batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values (N, C, H, W), labels (N,))`` with the checkpoint's image processor, the
    images decoded as training decodes them (`hf_ssl.data.decode_image`)."""
    pixels = []
    for start in range(0, len(dataset), batch_size):
        images = [decode_image(image) for image in dataset[start : start + batch_size][image_column]]
        pixels.append(image_processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(pixels), torch.as_tensor(dataset[label_column], dtype=torch.long)


def preprocess_masks(dataset: datasets.Dataset, mask_column: str, size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W)`` class indices from a column of single-channel mask images (PNG "L" / "P" / "I"),
    resized (nearest) to the processed images' `size` ``(H, W)``."""
    masks = []
    for mask in dataset[mask_column]:
        if not isinstance(mask, Image.Image):
            mask = Image.fromarray(np.asarray(mask))
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"column {mask_column!r} must hold single-channel class-index images (PNG mode L, P or "
                             f"I), got mode {mask.mode}")
        if mask.size != (size[1], size[0]):
            mask = mask.resize((size[1], size[0]), Image.Resampling.NEAREST)
        masks.append(torch.from_numpy(np.asarray(mask).astype(np.int64)))
    return torch.stack(masks)


def processor_crops(image_processor) -> bool:
    """True when `image_processor` cuts part of the image away (a centre crop, or ConvNeXt's
    ``crop_pct`` below 384 px), so that a mask resized to its output would not line up."""
    if getattr(image_processor, "do_center_crop", False):
        return True
    shortest_edge = (getattr(image_processor, "size", None) or {}).get("shortest_edge")
    return getattr(image_processor, "crop_pct", None) is not None and shortest_edge is not None and shortest_edge < 384


def image_processor_for(model_path: str | os.PathLike):
    """The image processor saved with a run folder (or its ``backbone/``), a backbone folder or a Hub repo."""
    local = Path(model_path)
    for candidate in (local, local / "backbone"):
        if candidate.is_dir() and (candidate / "preprocessor_config.json").is_file():
            return AutoImageProcessor.from_pretrained(str(candidate))
    return AutoImageProcessor.from_pretrained(str(model_path))


@dataclass(frozen=True)
class DataSelection:
    """Which labelled images an evaluation reads.

    Args:
        dataset_name: bundled data (None, "digits", "digit-scenes"), a Hub id, a local
            ``save_to_disk`` folder or a packaged builder name.
        train_split, test_split: the labelled split protocols learn from, and the one they report on.
        image_column, label_column: columns of both splits.
        mask_column: the per-pixel class column the segmentation protocols read, where the data has
            it (the bundled scenes do).
        max_samples: cap on images per split (quick checks).
    """

    dataset_name: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    image_column: str = "image"
    label_column: str = "label"
    max_samples: int | None = None
    mask_column: str = "mask"

    @property
    def label(self) -> str:
        return dataset_label(self.dataset_name)


@dataclass
class LabelledData:
    """Preprocessed labelled images, shared by every protocol and candidate of one evaluation.

    Args:
        train_pixels: (N, C, H, W); train_labels: (N,); test_pixels: (M, C, H, W); test_labels: (M,).
        num_classes: C.
        selection: where they come from.
        key: identifies the images and their preprocessing (feature caches compare it).
        train_masks: (N, H, W), test_masks: (M, H, W): per-pixel classes, or None when the data has
            no mask column (`missing_masks` says why).
    """

    train_pixels: torch.Tensor
    train_labels: torch.Tensor
    test_pixels: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    selection: DataSelection
    key: str
    train_masks: torch.Tensor | None = None
    test_masks: torch.Tensor | None = None
    missing_masks: str = "the data has no mask column"

    @property
    def num_mask_classes(self) -> int:
        """K: the largest class in either split's masks, plus one (the ignored value 255 left out)."""
        largest = [int(masks[masks != IGNORE_INDEX].max()) for masks in (self.train_masks, self.test_masks)
                   if masks is not None and (masks != IGNORE_INDEX).any()]
        return max(largest, default=0) + 1

    def require_masks(self, protocol: str) -> None:
        """Raise ValueError naming the reason when there are no masks for `protocol`."""
        if self.train_masks is None or self.test_masks is None:
            raise ValueError(f"{protocol} needs per-pixel masks: {self.missing_masks}")

    @classmethod
    def load(cls, selection: DataSelection, image_processor) -> LabelledData:
        columns = (selection.image_column, selection.label_column)
        train = load_labelled_split(selection.dataset_name, selection.train_split, *columns, selection.max_samples)
        test = load_labelled_split(selection.dataset_name, selection.test_split, *columns, selection.max_samples)
        train_pixels, train_labels = preprocess(train, image_processor, *columns)
        test_pixels, test_labels = preprocess(test, image_processor, *columns)
        masks, missing = (None, None), f"neither split has a column {selection.mask_column!r} (--mask_column)"
        if selection.mask_column in train.column_names and selection.mask_column in test.column_names:
            missing = "the image processor crops, so masks resized to its output would not line up with the pixels"
            if not processor_crops(image_processor):
                try:
                    masks = tuple(preprocess_masks(split, selection.mask_column, tuple(pixels.shape[-2:]))
                                  for split, pixels in ((train, train_pixels), (test, test_pixels)))
                except ValueError as error:  # not class-index masks: only the segmentation protocols need them
                    missing = str(error)
        return cls(train_pixels, train_labels, test_pixels, test_labels,
                   num_classes=int(max(train_labels.max(), test_labels.max())) + 1, selection=selection,
                   key=f"{selection.label}|{selection.max_samples}|{image_processor.to_json_string()}",
                   train_masks=masks[0], test_masks=masks[1], missing_masks=missing)


__all__ = [
    "DataSelection",
    "LabelledData",
    "dataset_label",
    "image_processor_for",
    "is_bundled_dataset",
    "load_labelled_split",
    "preprocess",
]
