"""Zero-shot image classification with an image-text dual encoder (``hf-ssl evaluate --protocol zero_shot``).

CLIP (Radford et al. 2021, arXiv:2103.00020, sections 3.1.2-3.1.4): every class name is written
into prompt templates ("a photo of a {}."); the text embeddings of one class's prompts are
L2-normalised, averaged and normalised again (prompt ensembling), which gives one classifier
weight per class; an image gets the class whose weight has the highest cosine similarity with its
embedding. No labelled example is used. Works on any model with ``get_image_features`` and
``get_text_features`` (hf-ssl's `BackboneForDualEncoder`, transformers' `VisionTextDualEncoderModel`,
`CLIPModel`), with the folder's tokenizer and image processor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from hf_ssl.data.images import decode_image


from .data import DataSelection, image_processor_for, load_labelled_split
from .metrics import classification_metrics
from .protocol import EvaluationProtocol, register_protocol

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def _projected(features) -> torch.Tensor:
    """``(B, P)`` from what ``get_*_features`` returns: a tensor (older transformers) or an output
    whose ``pooler_output`` holds the projection (transformers 5)."""
    return features if torch.is_tensor(features) else features.pooler_output


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """``(M, P)`` L2-normalised text embeddings (padded per batch, truncated to the tokenizer's limit)."""
    device = next(model.parameters()).device
    embeddings = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt")
        features = model.get_text_features(input_ids=encoded["input_ids"].to(device),
                                           attention_mask=encoded["attention_mask"].to(device))
        embeddings.append(F.normalize(_projected(features).float(), dim=-1).cpu())
    return torch.cat(embeddings)


@torch.no_grad()
def embed_images(model, image_processor, images, batch_size: int = 256) -> torch.Tensor:
    """``(N, P)`` L2-normalised image embeddings of PIL images (any mode), with the folder's processor."""
    device = next(model.parameters()).device
    embeddings = []
    for start in range(0, len(images), batch_size):
        batch = [decode_image(image) for image in images[start : start + batch_size]]
        pixel_values = image_processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        embeddings.append(F.normalize(_projected(model.get_image_features(pixel_values=pixel_values)).float(), dim=-1).cpu())
    return torch.cat(embeddings)


def class_embeddings(model, tokenizer, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """``(C, P)`` zero-shot classifier: per class, the normalised mean of its normalised prompt embeddings.

    Raises:
        ValueError: a template without ``{}``, or no class names / templates.
    """
    if not class_names or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}' placeholder for the label name")
    prompts = [template.format(name) for name in class_names for template in templates]
    prompt_embeddings = embed_texts(model, tokenizer, prompts).view(len(class_names), len(templates), -1)  # (C, T, P)
    return F.normalize(prompt_embeddings.mean(dim=1), dim=-1)


def zero_shot_classify(
    model, tokenizer, image_embeddings: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES, top_k: int = 5,
) -> dict[str, float]:
    """Top-1 / top-k accuracy of the zero-shot classifier on ``(N, P)`` normalised image embeddings.

    Args:
        labels: ``(N,)`` class indices into `class_names`.
        top_k: k of the top-k accuracy (capped at the number of classes).
    """
    weights = class_embeddings(model, tokenizer, class_names, templates)  # (C, P)
    scores = image_embeddings @ weights.T  # (N, C) cosine similarities
    return classification_metrics(scores, labels, top_k=min(top_k, len(class_names)))


def load_image_text_model(model_path: str | os.PathLike, random_init: bool = False, seed: int = 0):
    """``(model, tokenizer, image_processor)`` of a dual encoder folder or Hub repo, in eval mode.

    Args:
        random_init: the same architecture, randomly initialised (the "before training" baseline;
            the tokenizer is the folder's).

    Raises:
        ValueError: the folder holds no image-text model or no tokenizer.
    """
    from hf_ssl.safe_loading import load_pretrained

    model = load_pretrained(model_path)
    if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
        raise ValueError(f"{model_path} holds a {type(model).__name__}, not an image-text model: the zero_shot and "
                         "retrieval protocols need a dual encoder run folder (--method dual_encoder)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    except (OSError, ValueError) as error:
        raise ValueError(f"{model_path} has no tokenizer ({str(error).splitlines()[0]})") from error
    if random_init:
        torch.manual_seed(seed)
        model = AutoModel.from_config(model.config)
    return model.eval(), tokenizer, image_processor_for(model_path)


def _class_indices(values: list, class_names: list[str] | None, feature) -> tuple[torch.Tensor, list[str]]:
    """Integer labels and their names: ClassLabel / int columns index `class_names` (default: the
    ClassLabel's names); string columns are looked up in `class_names` (default: sorted values)."""
    if values and isinstance(values[0], str):
        names = list(class_names) if class_names else sorted(set(values))
        missing = sorted(set(values) - set(names))
        if missing:
            raise ValueError(f"--labels lacks the dataset's label values {missing[:5]}")
        return torch.tensor([names.index(value) for value in values]), names
    labels = torch.as_tensor(values, dtype=torch.long)
    names = list(class_names) if class_names else list(getattr(feature, "names", None) or [])
    if not names:
        raise ValueError("the label column has no class names (not a ClassLabel): give them with --labels, in class-index order")
    if int(labels.max()) >= len(names):
        raise ValueError(f"{len(names)} label names for class indices up to {int(labels.max())}: give one name per class")
    return labels, names


@dataclass(frozen=True)
class ZeroShotSettings:
    """Class names and prompt templates of zero-shot classification."""

    labels: tuple[str, ...] | None = field(default=None, metadata={
        "aliases": ("--labels",), "help": "class names in class-index order (default: the label column's)"})
    templates: tuple[str, ...] = field(default=DEFAULT_TEMPLATES, metadata={
        "aliases": ("--templates",), "help": "prompt templates with {} for the label, ensembled"})


class ZeroShotProtocol(EvaluationProtocol):
    name = "zero_shot"
    title = "Zero-shot"
    description = "classification from the class names' prompt embeddings (image-text models)"
    settings_class = ZeroShotSettings
    image_text = True

    def evaluate_folder(self, model_path: str, selection: DataSelection, settings: ZeroShotSettings, random_init: bool,
                        seed: int) -> dict:
        model, tokenizer, image_processor = load_image_text_model(model_path, random_init, seed)
        split = load_labelled_split(selection.dataset_name, selection.test_split, selection.image_column,
                                    selection.label_column, selection.max_samples)
        label_ids, class_names = _class_indices(split[selection.label_column], list(settings.labels or []) or None,
                                                split.features.get(selection.label_column))
        templates = list(settings.templates)
        logger.info("zero-shot over %d classes x %d templates", len(class_names), len(templates))
        image_embeddings = embed_images(model, image_processor, split[selection.image_column])
        metrics = zero_shot_classify(model, tokenizer, image_embeddings, label_ids, class_names, templates)
        return {**metrics, "task_type": "zero-shot-image-classification", "label_setting": "none", "num_labelled": 0,
                "class_names": class_names, "templates": templates}

    def details(self, settings: ZeroShotSettings) -> dict:
        return {}


ZERO_SHOT = register_protocol(ZeroShotProtocol())


def is_image_text_folder(path: str | os.PathLike) -> bool:
    """True for a local run folder of an image-text model (it ships a tokenizer)."""
    return Path(path).is_dir() and (Path(path) / "tokenizer_config.json").is_file()


__all__ = [
    "DEFAULT_TEMPLATES",
    "class_embeddings",
    "embed_images",
    "embed_texts",
    "ZeroShotSettings",
    "is_image_text_folder",
    "load_image_text_model",
    "zero_shot_classify",
]
