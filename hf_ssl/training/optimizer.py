"""AdamW with weight decay on matrices only (nanoGPT's rule: parameters with >= 2 dimensions)."""

from __future__ import annotations

import torch
from torch import nn

from hf_ssl.recipes.base import OptimizerDefaults


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed group (>= 2-D: weights, embeddings) and one
    without decay (1-D: biases, norm scales), so normalisation and offsets are not shrunk."""
    decayed, not_decayed = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decayed if parameter.ndim >= 2 else not_decayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]


def scaled_learning_rate(defaults: OptimizerDefaults, total_batch_size: int) -> float:
    """The linear scaling rule: ``base_learning_rate * total_batch_size / reference_batch_size``."""
    return defaults.base_learning_rate * total_batch_size / defaults.reference_batch_size


def build_optimizer(
    model: nn.Module, defaults: OptimizerDefaults, learning_rate: float, weight_decay: float | None = None
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups` with the recipe's betas (and weight decay unless given)."""
    decay = defaults.weight_decay if weight_decay is None else weight_decay
    return torch.optim.AdamW(parameter_groups(model, decay), lr=learning_rate, betas=defaults.betas)
