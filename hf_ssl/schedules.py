"""Per-step precomputed schedules (learning rate, weight decay, EMA momentum, ...), as in DINO's main_dino.py.

A schedule is a 1-D tensor with one value per optimizer step; the loop reads ``schedule[step]``.
Precomputing makes the value at any step a pure function of the step, so resuming needs only
the step counter.
"""

from __future__ import annotations

import math

import torch


def cosine_schedule_with_warmup(
    peak_value: float, final_value: float, total_steps: int, warmup_steps: int = 0, warmup_start_value: float = 0.0
) -> torch.Tensor:
    """Linear warm-up from `warmup_start_value` to `peak_value`, then cosine decay to `final_value`.

    Args:
        total_steps: length of the schedule (optimizer steps), >= 1.
        warmup_steps: steps of linear warm-up, 0 <= warmup_steps <= total_steps. Step ``i`` of the
            warm-up has ``start + (peak - start) * i / warmup_steps``.

    Returns:
        ``(total_steps,)`` float64; cosine step ``j`` (0-based after warm-up, D = total - warmup)
        is ``final + (peak - final) * (1 + cos(pi * j / D)) / 2``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    warmup = [warmup_start_value + (peak_value - warmup_start_value) * step / warmup_steps for step in range(warmup_steps)]
    decay_steps = total_steps - warmup_steps
    cosine = [
        final_value + (peak_value - final_value) * (1 + math.cos(math.pi * step / decay_steps)) / 2
        for step in range(decay_steps)
    ]
    return torch.tensor(warmup + cosine, dtype=torch.float64)


def apply_optimizer_schedules(optimizer: torch.optim.Optimizer, learning_rate: float, weight_decay: float) -> None:
    """Write this step's learning rate and weight decay into the optimizer's parameter groups.

    A group's optional ``lr_scale`` multiplies the learning rate (layer-wise decay); groups with
    ``apply_weight_decay=False`` (biases, norms, tokens) keep a weight decay of 0.
    """
    for group in optimizer.param_groups:
        group["lr"] = learning_rate * group.get("lr_scale", 1.0)
        group["weight_decay"] = weight_decay if group.get("apply_weight_decay", True) else 0.0


def constant_schedule(value: float, total_steps: int) -> torch.Tensor:
    """``(total_steps,)`` float64 filled with `value`."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return torch.full((total_steps,), float(value), dtype=torch.float64)
