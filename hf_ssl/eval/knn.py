"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol).

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", arXiv:2104.14294:
features are L2-normalised; each test feature takes its k most cosine-similar training features;
neighbour i votes for its class with weight exp(s_i / T); the class with the largest summed vote
wins. Defaults k=20, T=0.07 as in the paper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .metrics import classification_metrics
from .protocol import EvaluationProtocol, register_protocol

if TYPE_CHECKING:
    from .candidates import Candidate
    from .data import LabelledData


@torch.no_grad()
def knn_class_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Temperature-weighted neighbour votes per class.

    Args:
        train_features: (N, D) reference features.
        train_labels: (N,) integer labels in [0, num_classes).
        test_features: (M, D) query features.
        k: neighbours per query (clipped to N).
        temperature: T in exp(similarity / T).
        num_classes: C; defaults to ``max(train_labels) + 1``.
        chunk_size: test rows scored at once (bounds memory at chunk_size x N).

    Returns:
        (M, C) float32 summed votes.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "train_features and test_features must be (N, D) and (M, D) with the same D, got "
            f"{tuple(train_features.shape)} and {tuple(test_features.shape)}"
        )
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels must be ({train_features.shape[0]},), got {tuple(train_labels.shape)}")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    k = min(k, train_features.shape[0])
    train_normed = F.normalize(train_features.float(), dim=1)  # (N, D)
    test_normed = F.normalize(test_features.float(), dim=1)  # (M, D)
    scores = []
    for query in test_normed.split(chunk_size):
        similarity = query @ train_normed.T  # (m, N)
        top_similarity, top_index = similarity.topk(k, dim=1)  # (m, k)
        weights = (top_similarity / temperature).exp()  # (m, k)
        one_hot = F.one_hot(train_labels[top_index], num_classes).float()  # (m, k, C)
        scores.append((one_hot * weights.unsqueeze(-1)).sum(dim=1))  # (m, C)
    return torch.cat(scores)  # (M, C)


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> dict[str, float]:
    """kNN accuracy of frozen features (DINO protocol).

    Args:
        train_features: (N, D); train_labels: (N,); test_features: (M, D); test_labels: (M,).
        k, temperature: neighbours and vote temperature (DINO: 20 and 0.07).
        num_classes: C; defaults to ``max(train_labels, test_labels) + 1``.

    Returns:
        ``{"accuracy": float, "top5_accuracy": float}`` (top-5 counts a hit if the true class
        is among the 5 best-voted classes; only reported when C > 5, see `classification_metrics`).
    """
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    test_labels = torch.as_tensor(test_labels, dtype=torch.long)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_class_scores(train_features, train_labels, test_features, k, temperature, num_classes)
    return classification_metrics(scores, test_labels)


@dataclass(frozen=True)
class KnnSettings:
    """DINO's kNN protocol: `k` neighbours, votes weighted by exp(similarity / `temperature`)."""

    k: int = field(default=20, metadata={"help": "neighbours (DINO: 20)"})
    temperature: float = field(default=0.07, metadata={"help": "vote temperature (DINO: 0.07)"})


class KnnProtocol(EvaluationProtocol):
    name = "knn"
    title = "k-NN"
    description = "weighted k-nearest neighbours on frozen features (DINO's protocol)"
    settings_class = KnnSettings

    def evaluate(self, candidate: Candidate, data: LabelledData, subset: torch.Tensor, settings: KnnSettings,
                 seed: int) -> dict:
        train, test = candidate.features(data)
        return knn_classify(train[subset], data.train_labels[subset], test, data.test_labels, k=settings.k,
                            temperature=settings.temperature, num_classes=data.num_classes)


KNN = register_protocol(KnnProtocol())
