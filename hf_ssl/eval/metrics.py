"""Classification metrics as an `evaluate` module that works offline.

`evaluate.load("accuracy")` fetches its metric script from the Hugging Face Hub (checked with
evaluate 0.4.6: with HF_HUB_OFFLINE=1 and an empty cache it raises FileNotFoundError), so hf-ssl
ships its own `evaluate.Metric` subclass: same `add_batch` / `compute` interface, same
"accuracy" definition, plus top-k accuracy from class scores.
"""

from __future__ import annotations

import importlib
import os
import sys

import datasets
import numpy as np
import torch


def _import_evaluate_package():
    """Import the `evaluate` library even when a script folder on sys.path has an ``evaluate.py``.

    Scripts in ``trainers/`` run with that folder as ``sys.path[0]``, where ``trainers/evaluate.py``
    would shadow the library (and import itself in a circle).
    """
    loaded = sys.modules.get("evaluate")
    if loaded is not None and hasattr(loaded, "Metric"):
        return loaded
    saved_path = sys.path[:]
    sys.path[:] = [entry for entry in saved_path if not os.path.isfile(os.path.join(entry or os.getcwd(), "evaluate.py"))]
    try:
        sys.modules.pop("evaluate", None)
        return importlib.import_module("evaluate")
    finally:
        sys.path[:] = saved_path


evaluate = _import_evaluate_package()

_DESCRIPTION = """Top-1 and top-k accuracy of class scores: the fraction of examples whose reference
class is the highest-scored class (top-1) or among the k highest-scored classes (top-k)."""

_INPUTS = """
Args:
    predictions: per-example class scores (logits, probabilities or kNN votes), shape (M, C).
    references: per-example true class index, shape (M,).
    top_k: k of the top-k accuracy (default 5).
Returns:
    accuracy: top-1 accuracy in [0, 1]; top{k}_accuracy: top-k accuracy in [0, 1], only when
    there are more than k classes (with C <= k every prediction is a top-k hit: 1.0 says nothing).
"""


class TopKAccuracy(evaluate.Metric):
    """Top-1 and top-k accuracy from class scores (an offline `evaluate.Metric`)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, top_k: int = 5) -> dict[str, float]:
        scores = np.asarray(predictions, dtype=np.float32)  # (M, C)
        labels = np.asarray(references, dtype=np.int64)  # (M,)
        if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
            raise ValueError(f"predictions must be (M, C) with M = len(references), got {scores.shape}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        # Stable sort so that ties resolve to the lower class index, as torch.argmax does.
        ranking = np.argsort(-scores, axis=1, kind="stable")  # (M, C)
        top1 = ranking[:, 0] == labels
        metrics = {"accuracy": float(top1.mean())}
        if scores.shape[1] > top_k:
            metrics[f"top{top_k}_accuracy"] = float((ranking[:, :top_k] == labels[:, None]).any(axis=1).mean())
        return metrics


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, top_k: int = 5) -> dict[str, float]:
    """Accuracy, and top-k accuracy when C > k, of class scores (M, C) against labels (M,), via `TopKAccuracy`."""
    metric = TopKAccuracy(keep_in_memory=True)
    return metric.compute(
        predictions=torch.as_tensor(scores).float().cpu().numpy(),
        references=torch.as_tensor(labels).long().cpu().numpy(),
        top_k=top_k,
    )
