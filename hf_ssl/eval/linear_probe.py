"""Linear probe: a linear classifier trained on frozen, pre-computed features.

The encoder runs once per split (`extract_features`, optionally cached on disk with
`cached_features`); every probe epoch then works on the (N, D) feature matrix only. Features
are standardised with the training mean / std (the role of MAE's affine-free BatchNorm before
the linear layer), and the classifier is trained with AdamW and a cosine learning-rate schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import classification_metrics


def train_linear_classifier(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 3e-2,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """Fit a linear layer on standardised features with cross-entropy.

    Args:
        train_features: (N, D); train_labels: (N,) integers in [0, num_classes).

    Returns:
        ``(classifier, mean, std)``: apply as ``classifier((x - mean) / std)``.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    features = train_features.float()
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    mean = features.mean(0)  # (D,)
    std = features.std(0, unbiased=False).clamp_min(1e-6)  # (D,)
    standardised = (features - mean) / std  # (N, D)
    classifier = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        classifier.weight.normal_(0.0, 0.01, generator=generator)
        classifier.bias.zero_()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for batch_index in order.split(batch_size):
            loss = F.cross_entropy(classifier(standardised[batch_index]), labels[batch_index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return classifier, mean, std


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 3e-2,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Linear-probe accuracy of frozen features.

    Args:
        train_features: (N, D); train_labels: (N,); test_features: (M, D); test_labels: (M,).
        num_classes: C; defaults to ``max(train_labels, test_labels) + 1``.
        epochs, batch_size, learning_rate, weight_decay, seed: probe training (AdamW + cosine).

    Returns:
        ``{"accuracy": float, "top5_accuracy": float}`` on the test features.
    """
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    test_labels = torch.as_tensor(test_labels, dtype=torch.long)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    classifier, mean, std = train_linear_classifier(
        train_features, train_labels, num_classes, epochs, batch_size, learning_rate, weight_decay, seed
    )
    with torch.no_grad():
        logits = classifier((test_features.float() - mean) / std)  # (M, C)
    return classification_metrics(logits, test_labels)
