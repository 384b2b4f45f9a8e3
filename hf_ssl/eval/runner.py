"""Evaluate a run folder (or a Hub repo) with kNN, linear probe and fine-tuning, and an image-text
model with zero-shot classification and retrieval (`hf_ssl.eval.zero_shot`); write eval_results.json.

Images come from the bundled default data (`hf_ssl.data.load_default_dataset`) or a `datasets`
dataset with an image and a label column; they are preprocessed with the checkpoint's own image
processor (preprocessor_config.json). Frozen features are computed once per split and shared by
kNN and the linear probe (and cached on disk when `feature_cache_dir` is set).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Literal

import datasets
import torch
from transformers import AutoImageProcessor, AutoModel

from hf_ssl.hub.loading import load_backbone

from .baselines import centred_pixel_features
from .features import Pooling, cached_features, extract_features
from .finetune import FinetuneSettings, finetune
from hf_ssl.data.default import BUNDLED_DATASET_LABELS, bundled_variant

from .knn import knn_classify
from .linear_probe import linear_probe
from .low_label import low_label_indices, parse_label_setting

logger = logging.getLogger(__name__)

Protocol = Literal["knn", "linear", "finetune", "zero_shot", "retrieval"]
IMAGE_TEXT_PROTOCOLS = ("zero_shot", "retrieval")
PROTOCOLS = ("knn", "linear", "finetune", *IMAGE_TEXT_PROTOCOLS)
# What a pre-trained encoder is compared with, in every report: the same encoder at random init
# (same protocol), the raw pixels (same protocol; not for fine-tuning, which needs an encoder), and
# the same architecture trained with labels on the labelled split (fine-tuned from random init).
BASELINES = ("random_init", "raw_pixels", "supervised")
BUNDLED_DATASET_LABEL = BUNDLED_DATASET_LABELS["digits"]


def is_bundled_dataset(dataset_name: str | None) -> bool:
    """True when `dataset_name` means bundled data (None / "digits" / "digit-scenes")."""
    return bundled_variant(dataset_name) is not None


def dataset_label(dataset_name: str | None) -> str:
    """How results and cards name a dataset: a description for bundled data, else its name."""
    variant = bundled_variant(dataset_name)
    return BUNDLED_DATASET_LABELS[variant] if variant is not None else str(dataset_name)


def load_labelled_split(
    dataset_name: str | None, split: str, image_column: str = "image", label_column: str = "label",
    max_samples: int | None = None,
) -> datasets.Dataset:
    """One split with `image_column` / `label_column`; the bundled digits when `dataset_name` is None."""
    if is_bundled_dataset(dataset_name):
        from hf_ssl.data import load_default_dataset

        dataset = load_default_dataset(split, variant=bundled_variant(dataset_name))
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
    baselines: tuple[str, ...] | list[str] = (),
    feature_cache_dir: str | os.PathLike | None = None,
    output_file: str | os.PathLike | None = None,
    seed: int = 0,
    finetune_settings: FinetuneSettings | None = None,
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
        baselines: any of `BASELINES`; each result then carries ``"baselines": {name: top-1}``
            measured with the same protocol, labels and split.
        finetune_settings: every fine-tuning setting (e.g. a published preset,
            `hf_ssl.eval.finetune.finetune_settings`); replaces the four ``finetune_*`` / ``layer_decay`` arguments.
        output_file: JSON file to merge the results into (e.g. ``run_dir/eval_results.json``).
        caption_column, labels, templates: the image-text protocols' caption column, class names
            (default: the label column's) and prompt templates (default "a photo of a {}.").

    Returns:
        ``{"knn": {"accuracy", "top5_accuracy", "dataset", "split", ...}, "linear": {...}, ...}``.
    """
    unknown = [protocol for protocol in protocols if protocol not in PROTOCOLS]
    if unknown:
        raise ValueError(f"protocols must be among {PROTOCOLS}, got {unknown}")
    unknown = [baseline for baseline in baselines if baseline not in BASELINES]
    if unknown:
        raise ValueError(f"baselines must be among {BASELINES}, got {unknown}")
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
    label = dataset_label(dataset_name)
    data_key = f"{label}|{max_samples}|{image_processor.to_json_string()}"

    def features(pixels: torch.Tensor, split: str) -> torch.Tensor:
        cache = Path(feature_cache_dir) / f"{split}-{pooling}.safetensors" if feature_cache_dir else None
        return cached_features(backbone, pixels, cache, f"{data_key}|{split}", pooling=pooling)

    frozen = {"knn", "linear"} & set(protocols)
    train_features = test_features = None
    if frozen:
        train_features, test_features = features(train_pixels, train_split), features(test_pixels, test_split)
    baseline_features = {}
    if frozen and "random_init" in baselines:
        random_backbone = random_init_like(backbone, seed)
        baseline_features["random_init"] = (extract_features(random_backbone, train_pixels, pooling=pooling),
                                            extract_features(random_backbone, test_pixels, pooling=pooling))
    if frozen and "raw_pixels" in baselines:
        baseline_features["raw_pixels"] = centred_pixel_features(train_pixels, test_pixels)

    def frozen_metrics(protocol: str, subset: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> dict:
        if protocol == "knn":
            return knn_classify(train[subset], train_labels[subset], test, test_labels, k=knn_k,
                                temperature=knn_temperature, num_classes=num_classes)
        return linear_probe(train[subset], train_labels[subset], test, test_labels, num_classes=num_classes,
                            epochs=linear_epochs, learning_rate=linear_learning_rate, seed=seed)

    settings = finetune_settings or FinetuneSettings(
        epochs=finetune_epochs, batch_size=finetune_batch_size, learning_rate=finetune_learning_rate,
        layer_decay=layer_decay)

    def finetuned_metrics(encoder: torch.nn.Module, subset: torch.Tensor) -> dict:
        metrics, _ = finetune(encoder, train_pixels[subset], train_labels[subset], test_pixels, test_labels,
                              num_classes=num_classes, pooling=pooling, seed=seed, **dataclasses.asdict(settings))
        return metrics

    for setting in label_settings:
        subset = low_label_indices(train_labels, seed=seed, **parse_label_setting(setting)) \
            if parse_label_setting(setting) else torch.arange(len(train_labels))
        suffix = "" if not parse_label_setting(setting) else f"-{setting}"
        supervised = None
        if "supervised" in baselines or ("finetune" in protocols and "random_init" in baselines):
            logger.info("training the supervised baseline (same architecture, random init) with %s labels", setting)
            supervised = finetuned_metrics(random_init_like(backbone, seed), subset)["accuracy"]
        for protocol in protocols:
            logger.info("evaluating %s with %s labels", protocol, setting)
            if protocol == "finetune":
                metrics = finetuned_metrics(backbone, subset)
                details = dataclasses.asdict(settings)
                compared = {"random_init": supervised} if "random_init" in baselines else {}
            else:
                metrics = frozen_metrics(protocol, subset, train_features, test_features)
                details = ({"k": knn_k, "temperature": knn_temperature} if protocol == "knn"
                           else {"epochs": linear_epochs, "learning_rate": linear_learning_rate})
                compared = {name: frozen_metrics(protocol, subset, *pair)["accuracy"]
                            for name, pair in baseline_features.items()}
            if "supervised" in baselines:
                compared["supervised"] = supervised
            results[protocol + suffix] = {
                **metrics, "dataset": label, "split": test_split, "train_split": train_split,
                "label_setting": setting, "num_labelled": int(len(subset)), "pooling": pooling,
                "random_init": random_init, **details,
                **({"baselines": {name: compared[name] for name in BASELINES if name in compared}} if compared else {}),
            }
    _merge_results(output_file, results)
    return results


def _merge_results(output_file: str | os.PathLike | None, results: dict[str, dict]) -> None:
    if output_file is not None:
        output_file = Path(output_file)
        merged = json.loads(output_file.read_text()) if output_file.is_file() else {}
        merged.update(results)
        output_file.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


def evaluate_run_after_training(run_dir: str | os.PathLike, dataset_name: str | None = None, seed: int = 0) -> str:
    """The end-of-pre-training check on bundled data: kNN of the run's encoder next to its three
    baselines (random init, raw pixels, supervised), through `evaluate_model` (the path
    ``hf-ssl evaluate`` takes), merged into ``run_dir/eval_results.json``. Returns the lines to print."""
    run_dir = Path(run_dir)
    result = evaluate_model(run_dir, protocols=("knn",), dataset_name=dataset_name, baselines=BASELINES,
                            output_file=run_dir / "eval_results.json", seed=seed)["knn"]
    report = format_comparison(result)
    from .zero_shot import is_image_text_folder

    if is_image_text_folder(run_dir):  # an image-text model also classifies from label names
        zero_shot = evaluate_model(run_dir, protocols=("zero_shot",), dataset_name=dataset_name, seed=seed,
                                   output_file=None)["zero_shot"]
        zero_shot["baselines"] = {"random_init": evaluate_model(
            run_dir, protocols=("zero_shot",), dataset_name=dataset_name, random_init=True, seed=seed)["zero_shot"]["accuracy"]}
        _merge_results(run_dir / "eval_results.json", {"zero_shot": zero_shot})
        report += (f"\nZero-shot accuracy from the label names: pre-trained {zero_shot['accuracy']:.4f} | random init "
                   f"{zero_shot['baselines']['random_init']:.4f}")
    return report


def format_comparison(result: dict) -> str:
    """One line per model: the encoder, then each baseline, with the verdict a reader looks for."""
    lines = [f"{result['dataset']}, {result['split']} split, kNN (k={result.get('k', 20)}) top-1:",
             f"  {'pre-trained encoder':<26} {result['accuracy']:.4f}"]
    names = {"random_init": "same encoder, random init", "raw_pixels": "raw pixels", "supervised": "supervised (labels)"}
    for name, value in result.get("baselines", {}).items():
        lines.append(f"  {names[name]:<26} {value:.4f}")
    # supervised is an upper reference, not a bar a label-free method is expected to clear
    label_free = [name for name in result.get("baselines", {}) if name != "supervised"]
    not_beaten = [names[name] for name in label_free if result["accuracy"] <= result["baselines"][name]]
    if not_beaten:
        lines.append(f"  The pre-trained encoder does NOT beat: {', '.join(not_beaten)}.")
    elif label_free:
        lines.append(f"  The pre-trained encoder beats every baseline without labels ({', '.join(names[n] for n in label_free)}).")
    return "\n".join(lines)
