"""Train, measure and save a segmentation model on images with masks: what ``hf-ssl finetune --task
segmentation`` runs.

The model is `hf_ssl.modeling.segmentation.BackboneForSemanticSegmentation` (the encoder and a
deconvolution decoder), trained by `finetune_segmentation` (the ``segmentation_finetune``
protocol's training: early stopping on a validation fifth's mean IoU). The folder it is saved to
loads with `AutoModelForSemanticSegmentation` and ``pipeline("image-segmentation")``, with hf_ssl
installed (registered classes) or without it (``trust_remote_code=True``: the code is copied next
to the weights).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_ssl.data.images import decode_image
from hf_ssl.data.segmentation import SegmentationSplits
from hf_ssl.remote_code import add_remote_code

from .data import IGNORE_INDEX, preprocess_masks
from .finetune import FinetuneSettings, training_steps
from .low_label import stratified_validation_split
from .segmentation_finetune import _predict_masks, finetune_segmentation

RESULTS_FILE = "eval_results.json"
FINETUNE_ARGUMENTS_FILE = "finetune_args.json"
FIGURE_FILE = "predictions.png"
RESULT_KEY = "segmentation_finetune-all"


@dataclass
class SegmentationData:
    """Preprocessed images and masks.

    Args:
        train_pixels: (N, C, H, W); train_masks: (N, H, W); test_pixels: (M, C, H, W); test_masks: (M, H, W).
        class_names: K names, class k's at k (background first).
        splits: where they come from.
    """

    train_pixels: torch.Tensor
    train_masks: torch.Tensor
    test_pixels: torch.Tensor
    test_masks: torch.Tensor
    class_names: tuple[str, ...]
    splits: SegmentationSplits

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def pixels_and_masks(split, image_column: str, mask_column: str, image_processor,
                     batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``((N, C, H, W) pixels, (N, H, W) masks)``: images through `image_processor`, masks resized to
    the pixels' size (nearest)."""
    pixels = []
    for start in range(0, len(split), batch_size):
        images = [decode_image(image) for image in split[start : start + batch_size][image_column]]
        pixels.append(image_processor(images=images, return_tensors="pt")["pixel_values"])
    pixels = torch.cat(pixels)
    return pixels, preprocess_masks(split, mask_column, tuple(pixels.shape[-2:]))


def prepare_segmentation_data(splits: SegmentationSplits, image_processor) -> SegmentationData:
    """Preprocess both splits; K = the largest class in the masks plus one, or the number of class
    names when the data names more.

    Raises:
        ValueError: a mask that is not a class-index image, or masks with no class but the background.
    """
    train_pixels, train_masks = pixels_and_masks(splits.train, splits.image_column, splits.mask_column, image_processor)
    test_pixels, test_masks = pixels_and_masks(splits.test, splits.image_column, splits.mask_column, image_processor)
    labelled = train_masks[train_masks != IGNORE_INDEX]
    if labelled.numel() == 0 or int(labelled.max()) == 0:
        raise ValueError(f"the train masks of {splits.description} hold no class but the background (0)")
    test_labelled = test_masks[test_masks != IGNORE_INDEX]
    num_classes = max(int(labelled.max()), int(test_labelled.max()) if test_labelled.numel() else 0) + 1
    names = tuple(splits.class_names or ())
    if len(names) > num_classes:
        num_classes = len(names)
    names = names[:num_classes] + tuple(f"class_{index}" for index in range(len(names), num_classes))
    return SegmentationData(train_pixels, train_masks, test_pixels, test_masks, names, splits)


def dominant_classes(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N,)`` the most frequent class of each mask other than the background and unlabelled pixels
    (0 when there is none): what the validation split is stratified by."""
    count = masks.shape[0]
    labelled = (masks != IGNORE_INDEX) & (masks > 0)
    image_index = torch.arange(count).view(-1, 1, 1).expand_as(masks)
    counts = torch.bincount(image_index[labelled] * num_classes + masks[labelled], minlength=count * num_classes)
    counts = counts.view(count, num_classes)
    return torch.where(counts.sum(1) > 0, counts.argmax(1), torch.zeros(count, dtype=torch.long))


def validation_strata(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N,)`` `dominant_classes`, with the classes that dominate a single image merged into the
    most common one: a stratified split needs two images per stratum, and one rare image must not
    leave the whole run without validation."""
    strata = dominant_classes(masks, num_classes)
    counts = torch.bincount(strata, minlength=num_classes)
    return torch.where(counts[strata] < 2, counts.argmax(), strata)


def planned_steps(data: SegmentationData, settings: FinetuneSettings, seed: int = 0) -> tuple[int, int]:
    """``(optimizer steps, images trained on)`` of `train_segmentation_model` (the rest validates)."""
    split = stratified_validation_split(validation_strata(data.train_masks, data.num_classes), seed=seed)
    fitted = len(split[0]) if split is not None else len(data.train_masks)
    return training_steps(settings, fitted), fitted


def train_segmentation_model(encoder: torch.nn.Module, data: SegmentationData, settings: FinetuneSettings,
                             seed: int = 0, progress: bool = False, stop_requested=None):
    """Fine-tune `encoder` with a new decoder on `data`; returns ``(model, metrics)``, the metrics on
    the test split with ``class_iou`` ``{name: IoU or None}`` (see `finetune_segmentation`)."""
    metrics, model = finetune_segmentation(
        encoder, data.train_pixels, data.train_masks, validation_strata(data.train_masks, data.num_classes),
        data.test_pixels, data.test_masks, data.num_classes, settings=settings, seed=seed,
        id2label=dict(enumerate(data.class_names)), progress=progress, stop_requested=stop_requested, per_class=True,
    )
    return model.cpu(), {**metrics, "class_iou": dict(zip(data.class_names, metrics["class_iou"], strict=True))}


def save_segmentation_model(model, image_processor, output_dir: str | os.PathLike, result: dict,
                            arguments: dict) -> Path:
    """Write the model, its image processor, its remote code, ``eval_results.json`` (`result` under
    `RESULT_KEY`) and ``finetune_args.json`` (`arguments`) into `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    add_remote_code(output_dir)
    (output_dir / RESULTS_FILE).write_text(json.dumps({RESULT_KEY: result}, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")
    (output_dir / FINETUNE_ARGUMENTS_FILE).write_text(json.dumps(arguments, indent=2, sort_keys=True) + "\n",
                                                      encoding="utf-8")
    return output_dir


def save_prediction_figure(model, data: SegmentationData, image_processor, path: str | os.PathLike,
                           count: int = 6) -> Path:
    """A grid of `count` test images: the image, its mask and the model's prediction (one colour per
    class, unlabelled pixels white)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from hf_ssl.analysis.encoders import displayable_images

    count = min(count, len(data.test_pixels))
    pixels, masks = data.test_pixels[:count], data.test_masks[:count]
    predictions = _predict_masks(model, pixels, count, next(model.parameters()).device)
    palette = plt.get_cmap("tab20", 20)
    colours = ListedColormap([palette(index % 20) for index in range(data.num_classes)] + [(1.0, 1.0, 1.0, 1.0)])
    images = displayable_images(pixels, image_processor).clamp(0, 1)
    figure, axes = plt.subplots(3, count, figsize=(1.8 * count, 5.6), squeeze=False)
    for column in range(count):
        shown = (images[column], masks[column].clamp(max=data.num_classes), predictions[column])
        for row, (image, title) in enumerate(zip(shown, ("image", "mask", "prediction"))):
            axis = axes[row][column]
            if row == 0:
                axis.imshow(image.numpy())
            else:
                axis.imshow(image.numpy(), cmap=colours, vmin=0, vmax=data.num_classes, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(title)
    figure.suptitle("test images: mask and prediction (one colour per class)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


__all__ = [
    "FIGURE_FILE",
    "FINETUNE_ARGUMENTS_FILE",
    "RESULTS_FILE",
    "RESULT_KEY",
    "SegmentationData",
    "dominant_classes",
    "pixels_and_masks",
    "planned_steps",
    "prepare_segmentation_data",
    "save_prediction_figure",
    "save_segmentation_model",
    "train_segmentation_model",
    "validation_strata",
]
