"""Exponential moving averages of networks: BYOL / MoCo v3 momentum encoders, DINO's teacher.

    teacher <- momentum * teacher + (1 - momentum) * student

with the momentum following a cosine from its base value to 1 over training (BYOL, Grill et al.
2020, arXiv:2006.07733, section 3.2: tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2; DINO uses the
same schedule from 0.996). The update is a recipe's `after_optimizer_step`; the momentum is one of
its named schedules, so resuming needs only the step counter.
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter, in order.

    Buffers (batch-norm running statistics) are left to the teacher's own forward passes, as in
    the official BYOL, MoCo v3 and DINO code.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    teacher_parameters = list(teacher.parameters())
    student_parameters = list(student.parameters())
    if len(teacher_parameters) != len(student_parameters):
        raise ValueError(f"teacher has {len(teacher_parameters)} parameters, student {len(student_parameters)}")
    torch._foreach_lerp_(teacher_parameters, [parameter.detach() for parameter in student_parameters], 1.0 - momentum)


def momentum_schedule(base_momentum: float, total_steps: int, final_momentum: float = 1.0) -> torch.Tensor:
    """Cosine from `base_momentum` (step 0) towards `final_momentum`: ``(total_steps,)`` float64.

    Step ``k`` of ``K``: ``final - (final - base) * (cos(pi * k / K) + 1) / 2`` (BYOL's formula).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return torch.tensor(
        [final_momentum - (final_momentum - base_momentum) * (math.cos(math.pi * step / total_steps) + 1) / 2
         for step in range(total_steps)],
        dtype=torch.float64,
    )


__all__ = ["momentum_schedule", "update_ema"]
