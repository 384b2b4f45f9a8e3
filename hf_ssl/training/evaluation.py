"""End-of-run check on the bundled digits: kNN accuracy of the pre-trained encoder vs random init."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hf_ssl.data.default import load_default_dataset
from hf_ssl.eval import extract_features, knn_classify
from hf_ssl.transforms import build_transform


def _digits_tensors(split: str, image_size: int, image_mean, image_std) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = load_default_dataset(split)
    transform = build_transform("eval", image_size, image_mean, image_std)
    pixel_values = torch.stack([transform(image)["pixel_values"] for image in dataset["image"]])  # (N, 3, H, W)
    return pixel_values, torch.tensor(dataset["label"])


def knn_accuracy_on_digits(
    backbones: dict[str, torch.nn.Module], image_size: int, image_mean: Sequence[float], image_std: Sequence[float], k: int = 20
) -> dict[str, dict[str, float]]:
    """kNN (DINO protocol, k=20, T=0.07) on digits train -> test for each named backbone.

    Returns:
        ``{name: {"accuracy", "top5_accuracy", "dataset", "split"}}``.
    """
    train_pixels, train_labels = _digits_tensors("train", image_size, image_mean, image_std)
    test_pixels, test_labels = _digits_tensors("test", image_size, image_mean, image_std)
    results = {}
    for name, backbone in backbones.items():
        train_features = extract_features(backbone, train_pixels)
        test_features = extract_features(backbone, test_pixels)
        metrics = knn_classify(train_features, train_labels, test_features, test_labels, k=k)
        results[name] = {**metrics, "dataset": "sklearn-digits", "split": "test"}
    return results
