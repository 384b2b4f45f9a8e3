"""DINOv2's Sinkhorn-Knopp targets, iBOT masked-patch loss and KoLeo regulariser, against
transcriptions of facebookresearch/dinov2 dinov2/loss/*.py (one process; the 2-process case of the
targets is in test_distributed_losses.py), by hand, values and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_ssl.losses.dinov2 import koleo_loss, masked_patch_loss, masked_patch_weights, sinkhorn_knopp_targets


def official_sinkhorn_knopp(teacher_output, teacher_temp, n_iterations=3, dtype=torch.float32):
    """DINOLoss.sinkhorn_knopp_teacher of one process (`dtype` float32 as the official code)."""
    teacher_output = teacher_output.to(dtype)
    Q = torch.exp(teacher_output / teacher_temp).t()
    B = Q.shape[1]
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def official_ibot_forward_masked(student_masked, teacher_masked, student_masks_flat, student_temp=0.1):
    """iBOTPatchLoss.forward_masked (the torch lossfunc, masks_weight computed)."""
    loss = torch.sum(teacher_masked * F.log_softmax(student_masked / student_temp, dim=-1), dim=-1)
    masks_weight = ((1 / student_masks_flat.sum(-1).clamp(min=1.0)).unsqueeze(-1)
                    .expand_as(student_masks_flat)[student_masks_flat])
    return -(loss * masks_weight).sum() / student_masks_flat.shape[0]


def official_ibot_forward(student_patch_tokens, teacher_patch_tokens, student_masks_flat, student_temp=0.1):
    """iBOTPatchLoss.forward: the same loss on dense (B, N, K) tokens."""
    loss = torch.sum(teacher_patch_tokens * F.log_softmax(student_patch_tokens / student_temp, dim=-1), dim=-1)
    loss = torch.sum(loss * student_masks_flat.float(), dim=-1) / student_masks_flat.sum(dim=-1).clamp(min=1.0)
    return -loss.mean()


def official_koleo(student_output, eps=1e-8):
    """KoLeoLoss.forward."""
    student_output = F.normalize(student_output, eps=eps, p=2, dim=-1)
    dots = torch.mm(student_output, student_output.t())
    n = student_output.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)
    _, nearest = torch.max(dots, dim=1)
    distances = torch.nn.PairwiseDistance(2, eps=1e-8)(student_output, student_output[nearest])
    return -torch.log(distances + eps).mean()


def logits(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- Sinkhorn-Knopp ---------------------------------------------------------------------------------

@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_knopp_matches_the_official_code(iterations):
    teacher = logits(12, 7, scale=0.2)
    torch.testing.assert_close(sinkhorn_knopp_targets(teacher, 0.07, iterations),
                               official_sinkhorn_knopp(teacher, 0.07, iterations), rtol=1e-5, atol=1e-7)


def test_sinkhorn_knopp_targets_are_distributions_that_balance_the_prototypes():
    teacher = logits(40, 8, seed=1) + torch.linspace(0, 3, 8)  # the last prototypes favoured
    targets = sinkhorn_knopp_targets(teacher, 0.1, iterations=50)
    torch.testing.assert_close(targets.sum(1), torch.ones(40))
    torch.testing.assert_close(targets.sum(0), torch.full((8,), 40 / 8), rtol=1e-3, atol=1e-3)
    assert F.softmax(teacher / 0.1, dim=-1).sum(0)[-1] > 3 * 40 / 8  # plain softmax would not balance them


def test_sinkhorn_knopp_stays_finite_where_the_official_exp_overflows():
    teacher = logits(6, 5, seed=2) * 5  # logits / 0.04 reach hundreds: exp overflows float32, not float64
    assert not torch.isfinite(official_sinkhorn_knopp(teacher, 0.04)).all()
    targets = sinkhorn_knopp_targets(teacher, 0.04)
    assert torch.isfinite(targets).all()
    torch.testing.assert_close(targets, official_sinkhorn_knopp(teacher, 0.04, dtype=torch.float64).float(), rtol=1e-4, atol=1e-6)


def test_sinkhorn_knopp_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        sinkhorn_knopp_targets(torch.zeros(2, 3, 4), 0.1)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp_targets(torch.zeros(2, 3), 0.1, iterations=0)


# ---- iBOT masked-patch loss ------------------------------------------------------------------------

def _patch_case(seed=0):
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    student = logits(4, 6, 9, seed=seed).requires_grad_(True)
    teacher = F.softmax(logits(4, 6, 9, seed=seed + 1) / 0.07, dim=-1)
    return mask, student, teacher


def test_masked_patch_loss_matches_both_official_forms_values_and_gradients():
    mask, student, teacher = _patch_case()
    ours = masked_patch_loss(student[mask], teacher[mask], masked_patch_weights(mask), num_images=4)
    (gradient,) = torch.autograd.grad(ours, student)
    official = official_ibot_forward_masked(student[mask], teacher[mask], mask)
    (official_gradient,) = torch.autograd.grad(official, student)
    torch.testing.assert_close(ours, official)
    torch.testing.assert_close(gradient, official_gradient)
    torch.testing.assert_close(ours, official_ibot_forward(student, teacher, mask))
    assert not gradient[~mask].any()  # visible patches get nothing


def test_masked_patch_loss_by_hand():
    # one image, two masked patches, two prototypes: the mean of the two cross-entropies
    student = torch.tensor([[0.0, 0.1], [0.2, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    first = -math.log(math.exp(0.0) / (math.exp(0.0) + math.exp(1.0)))
    second = -0.5 * (2.0 - math.log(math.exp(2.0) + 1.0)) - 0.5 * (0.0 - math.log(math.exp(2.0) + 1.0))
    got = masked_patch_loss(student, teacher, masked_patch_weights(torch.tensor([[True, True]])), 1)
    assert got.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_masked_patch_weights_give_every_image_weight_one():
    mask, _, _ = _patch_case()
    weights = masked_patch_weights(mask)
    assert weights.shape == (int(mask.sum()),)
    torch.testing.assert_close(weights.sum(), torch.tensor(3.0))  # 3 images with a masked patch
    with pytest.raises(ValueError, match="bool"):
        masked_patch_weights(mask.long())


# ---- KoLeo -----------------------------------------------------------------------------------------

def test_koleo_matches_the_official_code_values_and_gradients():
    embeddings = logits(16, 8, seed=3).requires_grad_(True)
    ours = koleo_loss(embeddings)
    (gradient,) = torch.autograd.grad(ours, embeddings)
    official = official_koleo(embeddings)
    (official_gradient,) = torch.autograd.grad(official, embeddings)
    torch.testing.assert_close(ours, official)
    torch.testing.assert_close(gradient, official_gradient)


def test_koleo_by_hand_and_its_invariances():
    # three unit vectors at 0, 90 and 180 degrees: every nearest neighbour is sqrt(2) away
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert koleo_loss(points).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    assert koleo_loss(5 * points).item() == pytest.approx(koleo_loss(points).item(), abs=1e-6)  # scale-free
    spread, bunched = logits(32, 4, seed=4), logits(32, 4, seed=4) * 0.05 + torch.tensor([1.0, 0, 0, 0])
    assert koleo_loss(spread) < koleo_loss(bunched)  # spreading the batch lowers it


def test_koleo_ignores_autocast_and_refuses_one_row():
    embeddings = logits(8, 4, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = koleo_loss(embeddings)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, koleo_loss(embeddings))
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(embeddings[:1])
