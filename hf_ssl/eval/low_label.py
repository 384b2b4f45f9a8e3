"""Low-label subsets of a labelled training set (1 %, 10 %, one image per class, ...).

Semi-supervised evaluation as in SimCLR / BYOL / DINO: the encoder is pre-trained on all images,
the probe or fine-tuning sees labels for only a class-balanced subset.
"""

from __future__ import annotations

import math

import torch


def low_label_indices(
    labels: torch.Tensor,
    label_fraction: float | None = None,
    labels_per_class: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of a class-stratified labelled subset (sorted, deterministic for a seed).

    Exactly one of `label_fraction` / `labels_per_class` is set:
        label_fraction: keep ``max(1, round(fraction * n_c))`` examples of each class c
            (``0.01`` and ``0.1`` are the usual 1 % / 10 % settings); in (0, 1].
        labels_per_class: keep this many examples of each class (``1`` = one per class); a
            class with fewer examples keeps all of them.

    Args:
        labels: (N,) integer class labels.
        seed: seed of the per-class random choice.

    Returns:
        (K,) long tensor of indices into `labels`.
    """
    if (label_fraction is None) == (labels_per_class is None):
        raise ValueError("set exactly one of label_fraction or labels_per_class")
    if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    if labels_per_class is not None and labels_per_class < 1:
        raise ValueError(f"labels_per_class must be >= 1, got {labels_per_class}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().squeeze(1)  # (n_c,)
        if label_fraction is not None:
            keep = max(1, math.floor(label_fraction * len(members) + 0.5))
        else:
            keep = min(labels_per_class, len(members))
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:keep]])
    return torch.cat(chosen).sort().values


def parse_label_setting(setting: str) -> dict:
    """Turn a command-line label setting into `low_label_indices` keyword arguments.

    ``"all"`` -> {} (every label), ``"1%"`` / ``"10%"`` -> label_fraction, ``"1-per-class"`` /
    ``"5-per-class"`` -> labels_per_class.
    """
    setting = setting.strip().lower()
    if setting in ("all", "100%"):
        return {}
    if setting.endswith("%"):
        return {"label_fraction": float(setting[:-1]) / 100.0}
    if setting.endswith("-per-class"):
        return {"labels_per_class": int(setting[: -len("-per-class")])}
    raise ValueError(f"label setting must be 'all', '<p>%' (e.g. '1%', '10%') or '<n>-per-class', got {setting!r}")


# The held-out part of a labelled training split that probes and fine-tuning choose their settings on.
VALIDATION_FRACTION = 0.2


def stratified_validation_split(labels: torch.Tensor, fraction: float = VALIDATION_FRACTION,
                                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(train_indices, validation_indices)``: `fraction` of each class held out (at least one image
    of every class with two or more); None when some class has fewer than two images.

    Args:
        labels: (N,) integer class labels.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    train, validation = [], []
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().squeeze(1)  # (n_c,)
        if len(members) < 2:
            return None
        members = members[torch.randperm(len(members), generator=generator)]
        held_out = min(len(members) - 1, max(1, math.floor(fraction * len(members) + 0.5)))
        validation.append(members[:held_out])
        train.append(members[held_out:])
    return torch.cat(train).sort().values, torch.cat(validation).sort().values
