"""AdamW over a recipe's parameter groups (see `hf_ssl.recipes.parameter_groups` for the exemptions)."""

from __future__ import annotations

import torch

from hf_ssl.recipes.base import OptimizerDefaults


def can_fuse(parameter_groups: list[dict]) -> bool:
    """torch's fused AdamW kernel takes floating-point tensors on CPU or CUDA, one device type."""
    parameters = [parameter for group in parameter_groups for parameter in group["params"]]
    device_types = {parameter.device.type for parameter in parameters}
    return (bool(parameters) and len(device_types) == 1 and device_types <= {"cpu", "cuda"}
            and all(parameter.is_floating_point() for parameter in parameters))


def build_optimizer(parameter_groups: list[dict], defaults: OptimizerDefaults, learning_rate: float) -> torch.optim.AdamW:
    """AdamW with the recipe's betas; learning rate and weight decay are then set every step by the loop.

    The fused kernel is used where it applies: measured 1.07-1.13x images/s over the default
    (foreach) step for SimMIM, SplitMask and MAE at ViT-Tiny on 2 CPU cores
    (benchmarks/results/amd-epyc-2cores-vit-tiny-levers.md); same update rule.
    """
    groups = [{**group, "params": list(group["params"])} for group in parameter_groups]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=defaults.betas, fused=can_fuse(groups) or None)
