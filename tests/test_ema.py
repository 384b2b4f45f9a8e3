"""EMA update and momentum schedule against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from hf_ssl.ema import momentum_schedule, update_ema


def test_update_is_the_convex_combination():
    student, teacher = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]]))
        student.bias.fill_(4.0)
        teacher.weight.zero_()
        teacher.bias.fill_(-4.0)
    update_ema(teacher, student, momentum=0.75)
    torch.testing.assert_close(teacher.weight, torch.tensor([[0.25, 0.5]]))  # 0.75 * 0 + 0.25 * w
    torch.testing.assert_close(teacher.bias, torch.tensor([-2.0]))  # 0.75 * -4 + 0.25 * 4
    update_ema(teacher, student, momentum=1.0)
    torch.testing.assert_close(teacher.bias, torch.tensor([-2.0]))
    with pytest.raises(ValueError, match="momentum"):
        update_ema(teacher, student, 1.5)
    with pytest.raises(ValueError, match="parameters"):
        update_ema(teacher, nn.Linear(2, 1, bias=False), 0.5)


def test_momentum_schedule_is_byols_cosine():
    schedule = momentum_schedule(0.996, total_steps=4)
    expected = [1 - 0.004 * (math.cos(math.pi * step / 4) + 1) / 2 for step in range(4)]
    torch.testing.assert_close(schedule, torch.tensor(expected, dtype=torch.float64))
    assert schedule[0] == pytest.approx(0.996) and schedule[-1] < 1.0
