"""Evaluate a run folder (or a Hub repo) with kNN, linear probe and fine-tuning, and an image-text
model with zero-shot classification and retrieval (`hf_ssl.eval.zero_shot`); write eval_results.json.

Images come from the bundled default data (`hf_ssl.data.load_default_dataset`) or a `datasets`
dataset with an image and a label column; they are preprocessed with the checkpoint's own image
processor (preprocessor_config.json). Frozen features are computed once per split and shared by
kNN and the linear probe (and cached on disk when `feature_cache_dir` is set).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal

import datasets
import torch
from transformers import AutoImageProcessor, AutoModel

from hf_ssl.hub.loading import load_backbone

from .features import Pooling, cached_features
from .finetune import finetune
from hf_ssl.data.default import DEFAULT_DATASET_NAME

from .knn import knn_classify
from .linear_probe import linear_probe
from .low_label import low_label_indices, parse_label_setting

logger = logging.getLogger(__name__)

Protocol = Literal["knn", "linear", "finetune", "zero_shot", "retrieval"]
IMAGE_TEXT_PROTOCOLS = ("zero_shot", "retrieval")
PROTOCOLS = ("knn", "linear", "finetune", *IMAGE_TEXT_PROTOCOLS)
# "digits" is what training runs record for the bundled data (hf_ssl.data.DEFAULT_DATASET_NAME).
BUNDLED_DATASET_NAMES = (None, "", "default", "bundled", DEFAULT_DATASET_NAME)
BUNDLED_DATASET_LABEL = "hf-ssl bundled digits (scikit-learn)"


def is_bundled_dataset(dataset_name: str | None) -> bool:
    """True when `dataset_name` means the bundled default data."""
    return dataset_name in BUNDLED_DATASET_NAMES


def load_labelled_split(
    dataset_name: str | None, split: str, image_column: str = "image", label_column: str = "label",
    max_samples: int | None = None,
) -> datasets.Dataset:
    """One split with `image_column` / `label_column`; the bundled digits when `dataset_name` is None."""
    if is_bundled_dataset(dataset_name):
        from hf_ssl.data import load_default_dataset

        dataset = load_default_dataset(split)
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
    """``(pixel_values (N, C, H, W), labels (N,))`` with the checkpoint's image processor."""
    pixels = []
    for start in range(0, len(dataset), batch_size):
        images = [image.convert("RGB") for image in dataset[start : start + batch_size][image_column]]
        pixels.append(image_processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(pixels), torch.as_tensor(dataset[label_column], dtype=torch.long)


def _image_processor_for(model_path: str | os.PathLike):
    local = Path(model_path)
    for candidate in (local, local / "backbone"):
        if candidate.is_dir() and (candidate / "preprocessor_config.json").is_file():
            return AutoImageProcessor.from_pretrained(str(candidate))
    return AutoImageProcessor.from_pretrained(str(model_path))


def random_init_like(backbone: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised encoder of the same architecture (the random-init baseline)."""
    torch.manual_seed(seed)
    return AutoModel.from_config(backbone.config)


def evaluate_model(
    model_path: str | os.PathLike,
    protocols: tuple[Protocol, ...] | list[Protocol] = ("knn", "linear"),
    dataset_name: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    image_column: str = "image",
    label_column: str = "label",
    label_settings: tuple[str, ...] | list[str] = ("all",),
    pooling: Pooling = "mean",
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    linear_epochs: int = 100,
    linear_learning_rate: float = 3e-2,
    finetune_epochs: int = 10,
    finetune_learning_rate: float = 1e-3,
    finetune_batch_size: int = 32,
    layer_decay: float | None = 0.75,
    max_samples: int | None = None,
    random_init: bool = False,
    feature_cache_dir: str | os.PathLike | None = None,
    output_file: str | os.PathLike | None = None,
    seed: int = 0,
    caption_column: str = "caption",
    labels: list[str] | None = None,
    templates: list[str] | None = None,
) -> dict[str, dict]:
    """Run the chosen protocols and return (and optionally merge into `output_file`) their metrics.

    Args:
        model_path: a run folder, a backbone folder or a Hub repo id.
        protocols: any of ``"knn"``, ``"linear"``, ``"finetune"``, and for image-text models
            ``"zero_shot"`` / ``"retrieval"`` (on `test_split`; see `hf_ssl.eval.zero_shot`).
        label_settings: labelled fraction of the training split per evaluation: ``"all"``,
            ``"1%"``, ``"10%"``, ``"1-per-class"``...; results of a low-label setting are stored
            under ``"<protocol>-<setting>"`` (kNN and the probe use only the labelled subset).
        random_init: evaluate a randomly initialised encoder of the same architecture (baseline).
        output_file: JSON file to merge the results into (e.g. ``run_dir/eval_results.json``).
        caption_column, labels, templates: the image-text protocols' caption column, class names
            (default: the label column's) and prompt templates (default "a photo of a {}.").

    Returns:
        ``{"knn": {"accuracy", "top5_accuracy", "dataset", "split", ...}, "linear": {...}, ...}``.
    """
    unknown = [protocol for protocol in protocols if protocol not in PROTOCOLS]
    if unknown:
        raise ValueError(f"protocols must be among {PROTOCOLS}, got {unknown}")
    results: dict[str, dict] = {}
    if set(protocols) & set(IMAGE_TEXT_PROTOCOLS):
        from .zero_shot import evaluate_image_text

        results = evaluate_image_text(model_path, [p for p in protocols if p in IMAGE_TEXT_PROTOCOLS], dataset_name,
                                      test_split, image_column, label_column, caption_column, labels, templates,
                                      max_samples, random_init, seed)
        protocols = [protocol for protocol in protocols if protocol not in IMAGE_TEXT_PROTOCOLS]
        if not protocols:
            _merge_results(output_file, results)
            return results
    backbone = load_backbone(model_path)
    if random_init:
        backbone = random_init_like(backbone, seed)
    image_processor = _image_processor_for(model_path)
    train_set = load_labelled_split(dataset_name, train_split, image_column, label_column, max_samples)
    test_set = load_labelled_split(dataset_name, test_split, image_column, label_column, max_samples)
    train_pixels, train_labels = preprocess(train_set, image_processor, image_column, label_column)
    test_pixels, test_labels = preprocess(test_set, image_processor, image_column, label_column)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    dataset_label = BUNDLED_DATASET_LABEL if is_bundled_dataset(dataset_name) else str(dataset_name)
    data_key = f"{dataset_label}|{max_samples}|{image_processor.to_json_string()}"

    def features(pixels: torch.Tensor, split: str) -> torch.Tensor:
        cache = Path(feature_cache_dir) / f"{split}-{pooling}.safetensors" if feature_cache_dir else None
        return cached_features(backbone, pixels, cache, f"{data_key}|{split}", pooling=pooling)

    train_features = test_features = None
    if {"knn", "linear"} & set(protocols):
        train_features, test_features = features(train_pixels, train_split), features(test_pixels, test_split)
    for setting in label_settings:
        subset = low_label_indices(train_labels, seed=seed, **parse_label_setting(setting)) \
            if parse_label_setting(setting) else torch.arange(len(train_labels))
        suffix = "" if not parse_label_setting(setting) else f"-{setting}"
        for protocol in protocols:
            logger.info("evaluating %s with %s labels", protocol, setting)
            if protocol == "knn":
                metrics = knn_classify(train_features[subset], train_labels[subset], test_features, test_labels,
                                       k=knn_k, temperature=knn_temperature, num_classes=num_classes)
                details = {"k": knn_k, "temperature": knn_temperature}
            elif protocol == "linear":
                metrics = linear_probe(train_features[subset], train_labels[subset], test_features, test_labels,
                                       num_classes=num_classes, epochs=linear_epochs,
                                       learning_rate=linear_learning_rate, seed=seed)
                details = {"epochs": linear_epochs, "learning_rate": linear_learning_rate}
            else:
                metrics, _ = finetune(backbone, train_pixels[subset], train_labels[subset], test_pixels, test_labels,
                                      num_classes=num_classes, epochs=finetune_epochs, batch_size=finetune_batch_size,
                                      learning_rate=finetune_learning_rate, layer_decay=layer_decay, pooling=pooling,
                                      seed=seed)
                details = {"epochs": finetune_epochs, "learning_rate": finetune_learning_rate,
                           "layer_decay": layer_decay}
            results[protocol + suffix] = {
                **metrics, "dataset": dataset_label, "split": test_split, "train_split": train_split,
                "label_setting": setting, "num_labelled": int(len(subset)), "pooling": pooling,
                "random_init": random_init, **details,
            }
    _merge_results(output_file, results)
    return results


def _merge_results(output_file: str | os.PathLike | None, results: dict[str, dict]) -> None:
    if output_file is not None:
        output_file = Path(output_file)
        merged = json.loads(output_file.read_text()) if output_file.is_file() else {}
        merged.update(results)
        output_file.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


def evaluate_run_after_training(run_dir: str | os.PathLike, seed: int = 0) -> str:
    """The end-of-pre-training check on the bundled data: kNN of the run's encoder and of the same
    encoder at random init, through `evaluate_model` (the path ``hf-ssl evaluate`` takes), merged
    into ``run_dir/eval_results.json``. Returns the line to print."""
    run_dir = Path(run_dir)
    output_file = run_dir / "eval_results.json"
    pretrained = evaluate_model(run_dir, protocols=("knn",), output_file=None, seed=seed)["knn"]
    random_init = evaluate_model(run_dir, protocols=("knn",), random_init=True, output_file=None, seed=seed)["knn"]
    pretrained["random_init_accuracy"] = random_init["accuracy"]
    merged = json.loads(output_file.read_text()) if output_file.is_file() else {}
    merged["knn"] = pretrained
    line = (f"kNN accuracy on {pretrained['dataset']} (k={pretrained['k']}): pre-trained {pretrained['accuracy']:.4f} | "
            f"random init {random_init['accuracy']:.4f}")
    from .zero_shot import is_image_text_folder

    if is_image_text_folder(run_dir):  # an image-text model also classifies from label names
        zero_shot = evaluate_model(run_dir, protocols=("zero_shot",), seed=seed)["zero_shot"]
        zero_shot["random_init_accuracy"] = evaluate_model(run_dir, protocols=("zero_shot",), random_init=True,
                                                           seed=seed)["zero_shot"]["accuracy"]
        merged["zero_shot"] = zero_shot
        line += (f"\nZero-shot accuracy from the label names: pre-trained {zero_shot['accuracy']:.4f} | random init "
                 f"{zero_shot['random_init_accuracy']:.4f}")
    output_file.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return line
