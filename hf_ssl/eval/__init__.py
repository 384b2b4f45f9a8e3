"""Evaluation protocols for frozen and fine-tuned encoders: kNN, linear probe, fine-tuning.

Metrics are computed with `TopKAccuracy`, an `evaluate.Metric` shipped here because
`evaluate.load("accuracy")` needs the Hub.
"""

from .features import cached_features, extract_features, pool_hidden_states
from .finetune import BackboneClassifier, finetune
from .knn import knn_class_scores, knn_classify
from .linear_probe import fit_logistic_regression, linear_probe
from .low_label import low_label_indices, parse_label_setting
from .metrics import TopKAccuracy, classification_metrics
from .runner import BASELINES, evaluate_model

__all__ = [
    "BASELINES",
    "BackboneClassifier",
    "TopKAccuracy",
    "cached_features",
    "classification_metrics",
    "evaluate_model",
    "extract_features",
    "finetune",
    "fit_logistic_regression",
    "knn_class_scores",
    "knn_classify",
    "linear_probe",
    "low_label_indices",
    "parse_label_setting",
    "pool_hidden_states",
]
