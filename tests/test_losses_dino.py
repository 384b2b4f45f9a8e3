"""DINO loss, centre update and teacher-temperature schedule against the official DINOLoss."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_ssl.losses import dino_loss, teacher_temperature_schedule, update_dino_center


def official_dino_loss(student_output, teacher_output, center, teacher_temp, student_temp, ncrops):
    """facebookresearch/dino main_dino.py DINOLoss.forward (without its centre update)."""
    student_out = student_output / student_temp
    student_out = student_out.chunk(ncrops)
    teacher_out = F.softmax((teacher_output - center) / teacher_temp, dim=-1)
    teacher_out = teacher_out.detach().chunk(2)
    total_loss = 0
    n_loss_terms = 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    total_loss /= n_loss_terms
    return total_loss


def official_center_update(center, teacher_output, center_momentum, world_size=1):
    """DINOLoss.update_center with the all-reduce of one process."""
    batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
    batch_center = batch_center / (len(teacher_output) * world_size)
    return center * center_momentum + batch_center * (1 - center_momentum)


def _multi_crop_outputs(batch=3, prototypes=7, local_crops=4, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn((2 + local_crops) * batch, prototypes, generator=generator, dtype=dtype)
    teacher = torch.randn(2 * batch, prototypes, generator=generator, dtype=dtype)
    center = 0.3 * torch.randn(1, prototypes, generator=generator, dtype=dtype)
    return student, teacher, center


def test_dino_loss_matches_official_code_with_two_global_and_four_local_crops():
    student, teacher, center = _multi_crop_outputs()
    for teacher_temperature in (0.04, 0.07):
        got = dino_loss(student, teacher, center, teacher_temperature=teacher_temperature)
        expected = official_dino_loss(student, teacher, center, teacher_temperature, 0.1, ncrops=6)
        torch.testing.assert_close(got, expected)
    # A (K,) centre is the same as a (1, K) one.
    torch.testing.assert_close(dino_loss(student, teacher, center[0]), dino_loss(student, teacher, center))


def test_dino_loss_depends_on_the_crop_layout():
    # Official layout: chunk c holds crop c of every image. Interleaving images and crops differs.
    student, teacher, center = _multi_crop_outputs()
    interleaved = student.reshape(6, 3, -1).transpose(0, 1).reshape(18, -1)
    assert not torch.isclose(dino_loss(interleaved, teacher, center), dino_loss(student, teacher, center))


def test_dino_loss_hand_computed_values():
    # Zero outputs: uniform teacher, uniform student, every pair costs log K.
    prototypes = 5
    zeros_student, zeros_teacher = torch.zeros(6 * 2, prototypes), torch.zeros(2 * 2, prototypes)
    assert dino_loss(zeros_student, zeros_teacher, torch.zeros(prototypes)).item() == pytest.approx(math.log(5))
    # One image, 2 global + 1 local crop, K = 2; the teacher is one-hot-ish on prototype 0 after
    # sharpening, so each pair costs -log softmax(student / 0.1)[0].
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    student = torch.tensor([[0.1, 0.0], [0.2, 0.0], [0.0, 0.1]])
    p_teacher = 1 / (1 + math.exp(-1 / 0.04))

    def cross_entropy(logits):
        log_probabilities = F.log_softmax(torch.tensor(logits) / 0.1, dim=0)
        return -(p_teacher * log_probabilities[0] + (1 - p_teacher) * log_probabilities[1]).item()

    # Pairs: teacher 0 with students 1, 2; teacher 1 with students 0, 2.
    expected = (cross_entropy([0.2, 0.0]) + 2 * cross_entropy([0.0, 0.1]) + cross_entropy([0.1, 0.0])) / 4
    got = dino_loss(student, teacher, torch.zeros(2), teacher_temperature=0.04)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dino_loss_sends_gradients_to_the_student_only():
    student, teacher, center = _multi_crop_outputs(dtype=torch.float64)
    student.requires_grad_(), teacher.requires_grad_()
    dino_loss(student, teacher, center).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert torch.autograd.gradcheck(
        lambda s: dino_loss(s, teacher, center, teacher_temperature=0.07), (student.detach().requires_grad_(),)
    )


def test_center_update_matches_official_code_and_hand_values():
    _, teacher, center = _multi_crop_outputs()
    torch.testing.assert_close(update_dino_center(center, teacher), official_center_update(center, teacher, 0.9))
    new = update_dino_center(torch.zeros(2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), momentum=0.9)
    torch.testing.assert_close(new, torch.tensor([0.2, 0.3]))
    assert new.shape == (2,)
    moved = update_dino_center(torch.ones(1, 2), torch.zeros(3, 2), momentum=0.5)
    torch.testing.assert_close(moved, torch.full((1, 2), 0.5))


def test_teacher_temperature_schedule_reproduces_the_official_per_epoch_values():
    schedule = teacher_temperature_schedule(num_epochs=5, steps_per_epoch=2, warmup_epochs=3)
    official = torch.tensor([0.04, 0.055, 0.07, 0.07, 0.07], dtype=torch.float64)  # linspace(.04, .07, 3), ones
    torch.testing.assert_close(schedule, official.repeat_interleave(2))
    torch.testing.assert_close(schedule[:6], torch.tensor([0.04, 0.04, 0.055, 0.055, 0.07, 0.07], dtype=torch.float64))
    constant = teacher_temperature_schedule(4, 3, final_temperature=0.04, warmup_epochs=0)
    assert constant.shape == (12,) and torch.all(constant == 0.04)
    published = teacher_temperature_schedule(100, 1)  # paper: 0.04 -> 0.07 over 30 epochs
    assert published[0] == 0.04 and published[29] == pytest.approx(0.07) and published[99] == pytest.approx(0.07)
    assert torch.all(published[1:] >= published[:-1])


def test_bad_input_raises_value_errors():
    student, teacher, center = _multi_crop_outputs()
    with pytest.raises(ValueError, match="same K"):
        dino_loss(student[:, :3], teacher, center)
    with pytest.raises(ValueError, match="num_global_crops"):
        dino_loss(student, teacher[:5], center)
    with pytest.raises(ValueError, match="student_output"):
        dino_loss(student[:6], teacher, center)  # only the global crops
    with pytest.raises(ValueError, match="center"):
        dino_loss(student, teacher, center[:, :3])
    with pytest.raises(ValueError, match="teacher_temperature"):
        dino_loss(student, teacher, center, teacher_temperature=0.0)
    with pytest.raises(ValueError, match="momentum"):
        update_dino_center(center, teacher, momentum=1.5)
    with pytest.raises(ValueError, match="warmup_epochs"):
        teacher_temperature_schedule(10, 5, warmup_epochs=11)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        teacher_temperature_schedule(10, 0)
