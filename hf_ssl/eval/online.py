"""Online kNN during pre-training (``--eval_steps``): is the encoder learning, right now?

The labelled split is read and preprocessed once; every call encodes it with the current
encoder (eval mode, no gradient) and scores the DINO kNN protocol (k=20, T=0.07). On the bundled
data this takes a second or two on 2 CPU cores for a micro ViT.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hf_ssl.backbones import default_image_processor

from .data import load_labelled_split, preprocess
from .features import extract_features
from .knn import knn_classify


class OnlineKNN:
    """``encoder -> {"online_knn_accuracy": float}`` on a labelled dataset.

    Args:
        dataset_name: a `datasets` name / folder with train and test splits, or None for the bundled data.
        image_size, image_mean, image_std: the run's evaluation preprocessing.
        image_column, label_column: columns of the labelled dataset.
        max_samples: cap on images per split (keeps the check cheap on big datasets).
        k, temperature: the kNN protocol.
    """

    def __init__(
        self,
        dataset_name: str | None,
        image_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        image_column: str = "image",
        label_column: str = "label",
        max_samples: int | None = 2000,
        k: int = 20,
        temperature: float = 0.07,
    ):
        processor = default_image_processor(image_size, image_mean, image_std)
        train = load_labelled_split(dataset_name, "train", image_column, label_column, max_samples)
        test = load_labelled_split(dataset_name, "test", image_column, label_column, max_samples)
        self.train_pixels, self.train_labels = preprocess(train, processor, image_column, label_column)
        self.test_pixels, self.test_labels = preprocess(test, processor, image_column, label_column)
        self.k, self.temperature = k, temperature

    @torch.no_grad()
    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        train_features = extract_features(encoder, self.train_pixels)
        test_features = extract_features(encoder, self.test_pixels)
        metrics = knn_classify(train_features, self.train_labels, test_features, self.test_labels, k=self.k,
                               temperature=self.temperature)
        return {"online_knn_accuracy": float(metrics["accuracy"])}


__all__ = ["OnlineKNN"]
