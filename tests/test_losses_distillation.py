"""The distillation losses against hand-computed values, a loop reference and their invariances."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_ssl.losses import patch_similarity_distillation_loss, queue_distillation_loss


def test_queue_loss_by_hand():
    # t = e1, s = e2, Q = identity, tau = 1: p_t = (a, b), p_s = (b, a) with a = e / (e + 1), b = 1 / (e + 1),
    # KL = a log(a / b) + b log(b / a) = (a - b) * 1
    loss = queue_distillation_loss(torch.tensor([[0.0, 3.0]]), torch.tensor([[2.0, 0.0]]), torch.eye(2), temperature=1.0)
    assert float(loss) == pytest.approx((math.e - 1) / (math.e + 1), rel=1e-6)


def test_queue_loss_matches_torch_kl_div_and_trains_the_student_only():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 8, generator=generator, requires_grad=True)
    teacher = torch.randn(6, 8, generator=generator, requires_grad=True)
    queue = torch.randn(20, 8, generator=generator, requires_grad=True)
    loss = queue_distillation_loss(student, teacher, queue, temperature=0.07)
    prototypes = F.normalize(queue, dim=-1)
    expected = F.kl_div(F.log_softmax(F.normalize(student, dim=-1) @ prototypes.T / 0.07, dim=-1),
                        F.log_softmax(F.normalize(teacher, dim=-1) @ prototypes.T / 0.07, dim=-1),
                        log_target=True, reduction="batchmean")
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None and queue.grad is None
    # the same direction at another length is the same embedding; the teacher's own embedding costs nothing
    torch.testing.assert_close(queue_distillation_loss(3 * teacher, teacher, queue), torch.tensor(0.0), atol=1e-6, rtol=0)


def _loop_reference(student, teacher, temperature):
    total, rows = 0.0, 0
    for student_image, teacher_image in zip(student, teacher):
        s, t = F.normalize(student_image, dim=-1), F.normalize(teacher_image, dim=-1)
        for i in range(t.shape[0]):
            p_t = torch.softmax(t @ t[i] / temperature, dim=0)
            log_p_s = torch.log_softmax(s @ s[i] / temperature, dim=0)
            total += float((p_t * (p_t.log() - log_p_s)).sum())
            rows += 1
    return total / rows


def test_patch_similarity_loss_matches_a_loop_and_ignores_the_widths():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 5, 3, generator=generator), torch.randn(2, 5, 7, generator=generator)
    loss = patch_similarity_distillation_loss(student, teacher, temperature=0.5)
    assert float(loss) == pytest.approx(_loop_reference(student, teacher, 0.5), rel=1e-5)
    # A student whose patches are the teacher's in another orthonormal basis of a wider space has
    # the same similarities: nothing to learn.
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator))
    rotated = torch.cat([teacher, torch.zeros(2, 5, 5)], dim=-1) @ rotation  # (2, 5, 12)
    torch.testing.assert_close(patch_similarity_distillation_loss(rotated, teacher), torch.tensor(0.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("call, message", [
    (lambda: queue_distillation_loss(torch.randn(2, 4), torch.randn(2, 5), torch.randn(3, 5)), "equal shapes"),
    (lambda: queue_distillation_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 5)), "queue must be"),
    (lambda: queue_distillation_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 4), temperature=0), "> 0"),
    (lambda: patch_similarity_distillation_loss(torch.randn(2, 4, 3), torch.randn(2, 5, 3)), "same B and N"),
])
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
