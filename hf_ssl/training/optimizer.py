"""AdamW over a recipe's parameter groups (see `hf_ssl.recipes.parameter_groups` for the exemptions)."""

from __future__ import annotations

import torch

from hf_ssl.recipes.base import OptimizerDefaults


def resolve_optimization(arguments, defaults: OptimizerDefaults) -> dict:
    """The run's ``learning_rate`` (peak), ``weight_decay``, ``warmup_steps`` and ``max_grad_norm``:
    each flag when given, else the recipe's default (the learning rate by its scaling rule)."""
    warmup_steps = arguments.warmup_steps
    if warmup_steps is None:
        warmup_steps = int(round(defaults.warmup_fraction * arguments.max_steps))
    return {
        "learning_rate": arguments.learning_rate or defaults.scaled_learning_rate(arguments.total_batch_size),
        "weight_decay": defaults.weight_decay if arguments.weight_decay is None else arguments.weight_decay,
        "warmup_steps": warmup_steps,
        "max_grad_norm": defaults.gradient_clip_norm if arguments.max_grad_norm is None else arguments.max_grad_norm,
    }


def can_fuse(parameter_groups: list[dict]) -> bool:
    """torch's fused AdamW kernel takes floating-point tensors on CPU or CUDA, one device type."""
    parameters = [parameter for group in parameter_groups for parameter in group["params"]]
    device_types = {parameter.device.type for parameter in parameters}
    return (bool(parameters) and len(device_types) == 1 and device_types <= {"cpu", "cuda"}
            and all(parameter.is_floating_point() for parameter in parameters))


def build_optimizer(parameter_groups: list[dict], defaults: OptimizerDefaults, learning_rate: float) -> torch.optim.AdamW:
    """AdamW with the recipe's betas; learning rate and weight decay are then set every step by the loop.

    The fused kernel is used where it applies: faster than the default (foreach) step with the
    same update rule (benchmarks/results/amd-epyc-2cores-vit-tiny-levers.md).
    """
    groups = [{**group, "params": list(group["params"])} for group in parameter_groups]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=defaults.betas, fused=can_fuse(groups) or None)
