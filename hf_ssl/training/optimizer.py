"""AdamW over a recipe's parameter groups (see `hf_ssl.recipes.parameter_groups` for the exemptions)."""

from __future__ import annotations

import torch

from hf_ssl.recipes.base import OptimizerDefaults


def build_optimizer(parameter_groups: list[dict], defaults: OptimizerDefaults, learning_rate: float) -> torch.optim.AdamW:
    """AdamW with the recipe's betas; learning rate and weight decay are then set every step by the loop."""
    return torch.optim.AdamW(parameter_groups, lr=learning_rate, betas=defaults.betas)
