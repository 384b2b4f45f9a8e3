"""Joint-embedding losses against direct transcriptions of their papers' formulas / official code."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hf_ssl.losses import (
    barlow_twins_loss,
    barlow_twins_loss_terms,
    byol_loss,
    moco_v3_loss,
    nt_xent_loss,
    simsiam_loss,
    vicreg_loss,
)
from hf_ssl.losses.joint_embedding import sum_of_squared_cross_products


def _random(*shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


# ---- NT-Xent (SimCLR) ----


def reference_nt_xent(first, second, temperature):
    """The paper's l(i, j) summed over all 2N anchors with explicit loops (arXiv:2002.05709, Alg. 1)."""
    views = F.normalize(torch.cat([first, second]), dim=1)
    count = len(views)
    total = 0.0
    for anchor in range(count):
        positive = (anchor + count // 2) % count
        numerator = torch.exp(views[anchor] @ views[positive] / temperature)
        others = [other for other in range(count) if other != anchor]
        denominator = sum(torch.exp(views[anchor] @ views[other] / temperature) for other in others)
        total = total - torch.log(numerator / denominator)
    return total / count


def official_simclr_tf_loss(first, second, temperature):
    """google-research/simclr objective.py add_contrastive_loss, single replica, in torch."""
    hidden1, hidden2 = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    batch = len(hidden1)
    masks = torch.eye(batch) * 1e9
    logits_aa = hidden1 @ hidden1.T / temperature - masks
    logits_bb = hidden2 @ hidden2.T / temperature - masks
    logits_ab = hidden1 @ hidden2.T / temperature
    logits_ba = hidden2 @ hidden1.T / temperature
    labels = torch.arange(batch)
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], 1), labels)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], 1), labels)
    return loss_a + loss_b


def test_nt_xent_matches_loop_transcription_and_official_code():
    first, second = _random(6, 5, seed=1), _random(6, 5, seed=2)
    for temperature in (0.1, 0.5):
        got = nt_xent_loss(first, second, temperature=temperature)
        torch.testing.assert_close(got, reference_nt_xent(first, second, temperature), rtol=1e-5, atol=1e-6)
        # The official code sums the two branch means: twice the mean over 2N anchors.
        torch.testing.assert_close(2 * got, official_simclr_tf_loss(first, second, temperature), rtol=1e-5, atol=1e-6)


def test_nt_xent_hand_computed_value():
    # Two images, identical views e1, e2: each anchor sees its positive at cos 1, two negatives at cos 0.
    views = torch.eye(2)
    expected = math.log(1 + 2 / math.e)  # -log(e / (e + 2)) at temperature 1
    assert nt_xent_loss(views, views.clone(), temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_counts_same_view_negatives():
    # Dropping the same-branch negatives (plain cross-view InfoNCE) would give a different value.
    first, second = _random(5, 4, seed=3), _random(5, 4, seed=4)
    cross_view_logits = F.normalize(first, dim=1) @ F.normalize(second, dim=1).T / 0.1
    cross_view_only = F.cross_entropy(cross_view_logits, torch.arange(5))
    assert not torch.isclose(nt_xent_loss(first, second), cross_view_only)


# ---- MoCo v3 ----


def official_moco_v3_loss(query_1, query_2, key_1, key_2, temperature):
    """facebookresearch/moco-v3 moco/builder.py contrastive_loss, single process."""

    def contrastive_loss(q, k):
        q = nn.functional.normalize(q, dim=1)
        k = nn.functional.normalize(k, dim=1)
        logits = torch.einsum("nc,mc->nm", [q, k]) / temperature
        labels = torch.arange(logits.shape[0], dtype=torch.long)
        return nn.CrossEntropyLoss()(logits, labels) * (2 * temperature)

    return contrastive_loss(query_1, key_2) + contrastive_loss(query_2, key_1)


def test_moco_v3_matches_official_code_and_hand_value():
    tensors = [_random(6, 5, seed=seed) for seed in range(4)]
    for temperature in (0.2, 1.0):
        torch.testing.assert_close(
            moco_v3_loss(*tensors, temperature=temperature), official_moco_v3_loss(*tensors, temperature)
        )
    # Orthonormal, matching queries and keys: each ctr term is 2T * log(1 + exp(-1/T)).
    basis = torch.eye(2)
    expected = 2 * 2 * 0.2 * math.log(1 + math.exp(-1 / 0.2))
    assert moco_v3_loss(basis, basis, basis, basis, temperature=0.2).item() == pytest.approx(expected, rel=1e-6)


def test_moco_v3_sends_no_gradient_to_keys():
    query_1, query_2 = _random(4, 3, seed=1).requires_grad_(), _random(4, 3, seed=2).requires_grad_()
    key_1, key_2 = _random(4, 3, seed=3).requires_grad_(), _random(4, 3, seed=4).requires_grad_()
    moco_v3_loss(query_1, query_2, key_1, key_2).backward()
    assert query_1.grad is not None and query_1.grad.abs().sum() > 0
    assert key_1.grad is None and key_2.grad is None


# ---- BYOL and SimSiam ----


def reference_byol(prediction_1, prediction_2, target_1, target_2):
    """Eq. 2 of arXiv:2006.07733 per example with loops, symmetrised (L + L~), batch mean."""
    total = 0.0
    for index in range(len(prediction_1)):
        for prediction, target in ((prediction_1[index], target_2[index]), (prediction_2[index], target_1[index])):
            total = total + (prediction / prediction.norm() - target / target.norm()).pow(2).sum()
    return total / len(prediction_1)


def test_byol_matches_transcription_hand_values_and_stops_target_gradients():
    tensors = [_random(5, 4, seed=seed) for seed in range(4)]
    torch.testing.assert_close(byol_loss(*tensors), reference_byol(*tensors))
    unit_x, unit_y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert byol_loss(unit_x, unit_x, unit_y, unit_y).item() == pytest.approx(4.0)  # orthogonal: 2 + 2
    assert byol_loss(unit_x, 2 * unit_x, unit_x, unit_x).item() == pytest.approx(0.0, abs=1e-7)
    prediction, target = tensors[0].clone().requires_grad_(), tensors[2].clone().requires_grad_()
    byol_loss(prediction, tensors[1], target, tensors[3]).backward()
    assert prediction.grad is not None and target.grad is None


def official_simsiam_loss(p1, p2, z1, z2):
    """facebookresearch/simsiam main_simsiam.py train(), with builder.py's z.detach()."""
    criterion = nn.CosineSimilarity(dim=1)
    return -(criterion(p1, z2.detach()).mean() + criterion(p2, z1.detach()).mean()) * 0.5


def test_simsiam_matches_official_code_hand_value_and_stops_projection_gradients():
    tensors = [_random(5, 4, seed=seed) for seed in range(4)]
    torch.testing.assert_close(simsiam_loss(*tensors), official_simsiam_loss(*tensors))
    same = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    assert simsiam_loss(same, same, same, same).item() == pytest.approx(-1.0)
    prediction, projection = tensors[0].clone().requires_grad_(), tensors[2].clone().requires_grad_()
    simsiam_loss(prediction, tensors[1], projection, tensors[3]).backward()
    assert prediction.grad is not None and projection.grad is None


# ---- Barlow Twins ----


def official_off_diagonal(x):
    """facebookresearch/barlowtwins main.py off_diagonal."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def official_barlow_twins_loss(z1, z2, lambd):
    """facebookresearch/barlowtwins main.py BarlowTwins.forward after the projector, one process."""
    bn = nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype)
    c = bn(z1).T @ bn(z2)
    c.div_(z1.shape[0])
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = official_off_diagonal(c).pow_(2).sum()
    return on_diag + lambd * off_diag


# (rows, dimensions): 2 * rows > dimensions takes the (D, D) matrix, 2 * rows <= dimensions the Gram form.
MATRIX_AND_GRAM_SHAPES = [(8, 6), (8, 40)]


@pytest.mark.parametrize("shape", MATRIX_AND_GRAM_SHAPES)
def test_barlow_twins_matches_official_code(shape):
    first, second = _random(*shape, seed=1), _random(*shape, seed=2)
    for weight in (5e-3, 0.5):
        got = barlow_twins_loss(first, second, redundancy_weight=weight)
        torch.testing.assert_close(got, official_barlow_twins_loss(first, second, weight))


@pytest.mark.parametrize("shape", MATRIX_AND_GRAM_SHAPES)
def test_barlow_twins_terms_match_official_code(shape):
    first, second = _random(*shape, seed=3, dtype=torch.float64), _random(*shape, seed=4, dtype=torch.float64)
    terms = barlow_twins_loss_terms(first, second, redundancy_weight=0.25)
    torch.testing.assert_close(terms.on_diagonal, official_barlow_twins_loss(first, second, 0.0), rtol=1e-12, atol=1e-12)
    with_one = official_barlow_twins_loss(first, second, 1.0)
    torch.testing.assert_close(terms.off_diagonal, with_one - terms.on_diagonal, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(terms.loss, terms.on_diagonal + 0.25 * terms.off_diagonal, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("rows, dimensions", [(3, 5), (3, 6), (3, 7), (5, 3), (6, 6), (2, 64)])
def test_sum_of_squared_cross_products_equals_the_matrix_form(rows, dimensions):
    first = _random(rows, dimensions, seed=5, dtype=torch.float64)
    second = _random(rows, dimensions, seed=6, dtype=torch.float64)
    torch.testing.assert_close(sum_of_squared_cross_products(first, second), (first.T @ second).pow(2).sum(), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(sum_of_squared_cross_products(first, first), (first.T @ first).pow(2).sum(), rtol=1e-12, atol=0.0)


def test_barlow_twins_hand_computed_value():
    # Columns standardise to +-1 (variance 1): C = [[1, -1], [1, -1]] / (1 + eps).
    first = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    second = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    scale = 1 / (1 + 1e-5)
    on_diagonal = (1 - scale) ** 2 + (1 + scale) ** 2
    off_diagonal = 2 * scale**2
    got = barlow_twins_loss(first, second, redundancy_weight=0.1).item()
    assert got == pytest.approx(on_diagonal + 0.1 * off_diagonal, rel=1e-6)


# ---- VICReg ----


def official_vicreg_loss(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """facebookresearch/vicreg main_vicreg.py VICReg.forward after the projector, one process."""
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = official_off_diagonal(cov_x).pow_(2).sum().div(num_features)
    cov_loss = cov_loss + official_off_diagonal(cov_y).pow_(2).sum().div(num_features)
    loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
    return loss, repr_loss, std_loss, cov_loss


@pytest.mark.parametrize("shape", [(10, 6), (10, 40)])  # N > D: the (D, D) covariance; N <= D: the Gram form
def test_vicreg_matches_official_code_term_by_term(shape):
    # Scales 0.7 and 1.3 put the standard deviations on both sides of the hinge at 1.
    first, second = 0.7 * _random(*shape, seed=1), 1.3 * _random(*shape, seed=2)
    terms = vicreg_loss(first, second)
    expected = official_vicreg_loss(first, second)
    for got, want in zip(terms, expected):
        torch.testing.assert_close(got, want)
    assert 0 < terms.variance.item() and 0 < terms.covariance.item()
    weighted = vicreg_loss(first, second, invariance_weight=1.0, variance_weight=2.0, covariance_weight=3.0)
    torch.testing.assert_close(weighted.loss, official_vicreg_loss(first, second, 1.0, 2.0, 3.0)[0])


def test_vicreg_hand_computed_value_on_a_collapsed_batch():
    # Every row equal: std = sqrt(eps) = 0.01 per dimension, no covariance, identical views.
    collapsed = torch.ones(4, 3)
    terms = vicreg_loss(collapsed, collapsed.clone())
    assert terms.invariance.item() == 0.0 and terms.covariance.item() == 0.0
    assert terms.variance.item() == pytest.approx(0.99, rel=1e-6)
    assert terms.loss.item() == pytest.approx(25 * 0.99, rel=1e-6)


# ---- shared checks ----


def _loss_functions():
    return {
        "nt_xent": lambda a, b, c, d: nt_xent_loss(a, b, temperature=0.5),
        "moco_v3": lambda a, b, c, d: moco_v3_loss(a, b, c.detach(), d.detach()),
        "byol": lambda a, b, c, d: byol_loss(a, b, c.detach(), d.detach()),
        "simsiam": lambda a, b, c, d: simsiam_loss(a, b, c.detach(), d.detach()),
        "barlow_twins": lambda a, b, c, d: barlow_twins_loss(a, b, redundancy_weight=0.1),
        "vicreg": lambda a, b, c, d: vicreg_loss(a, b).loss,
    }


@pytest.mark.parametrize("name", sorted(_loss_functions()))
@pytest.mark.parametrize("shape", [(4, 3), (4, 9)])  # (4, 9): Barlow Twins' and VICReg's Gram form
def test_gradients_match_finite_differences_in_float64(name, shape):
    loss_function = _loss_functions()[name]
    first, second = _random(*shape, seed=1, dtype=torch.float64), _random(*shape, seed=2, dtype=torch.float64)
    third, fourth = _random(*shape, seed=3, dtype=torch.float64), _random(*shape, seed=4, dtype=torch.float64)
    first.requires_grad_(), second.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: loss_function(a, b, third, fourth), (first, second))


@pytest.mark.parametrize("name", sorted(_loss_functions()))
def test_half_precision_inputs_are_computed_in_float32(name):
    tensors = [_random(4, 3, seed=seed) for seed in range(4)]
    full = _loss_functions()[name](*tensors)
    half = _loss_functions()[name](*(tensor.to(torch.bfloat16) for tensor in tensors))
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)


def test_bad_input_raises_value_errors_naming_the_argument():
    good, other = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="embeddings_1 and embeddings_2"):
        nt_xent_loss(good, other)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(good, good, temperature=0.0)
    with pytest.raises(ValueError, match="key_2"):
        moco_v3_loss(good, good, good, other)
    with pytest.raises(ValueError, match="target_1"):
        byol_loss(good, good, torch.randn(4), good)
    with pytest.raises(ValueError, match="projection_2"):
        simsiam_loss(good, good, good, other)
    with pytest.raises(ValueError, match="eps"):
        barlow_twins_loss(good, good, eps=0.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        vicreg_loss(good[:1], good[:1])
