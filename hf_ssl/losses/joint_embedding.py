"""Losses of the two-view joint-embedding methods: SimCLR, MoCo v3, BYOL, SimSiam, Barlow Twins, VICReg.

Each loss is a plain function of embedding tensors (the outputs of the projection / prediction
heads in `hf_ssl.heads`) and knows nothing about models. Batch-level terms (negatives, batch
statistics) cover the GLOBAL batch when a process group is running and ``gather_distributed`` is
true (the default); in one process the flag changes nothing. Gradients follow the convention
of `hf_ssl.distributed`: with DDP-style averaging of parameter gradients over processes, W
processes on W slices of a batch produce the update that one process makes on the whole batch.
Every process must hold the same number of rows, except where a docstring says otherwise.

Inputs in half precision are computed in float32; float64 inputs stay float64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from hf_ssl.distributed import all_reduce_sum_with_grad, gather_with_grad, is_distributed

from .embeddings import (
    check_pair,
    check_positive,
    global_row_indices,
    matched_rows_cross_entropy,
    normalized,
    to_compute_dtype,
)


def nt_xent_loss(
    embeddings_1: torch.Tensor,
    embeddings_2: torch.Tensor,
    temperature: float = 0.1,
    gather_distributed: bool = True,
) -> torch.Tensor:
    """SimCLR's NT-Xent loss over the 2N views of a batch (Chen et al. 2020, arXiv:2002.05709).

    With z the L2-normalised embeddings of all 2N views (both views of every image) and
    sim(u, v) = u . v / tau, the loss of anchor i with positive p(i) (the other view of its
    image) is

        l(i) = -log( exp(sim(z_i, z_p(i))) / sum_{k != i} exp(sim(z_i, z_k)) )

    so the other 2N - 2 views, including those of the SAME augmentation branch, are negatives;
    the loss is the mean of l over the 2N anchors (paper, Algorithm 1). The official TensorFlow
    code (google-research/simclr, objective.py ``add_contrastive_loss``) returns the SUM of the
    two branch means, i.e. twice this value.

    Temperature: 0.1 is the official default (run.py ``--temperature``) and the ImageNet setting
    (the best of the paper's Table 5, 4096 examples per batch); the paper's appendix and the
    README use 0.5 for CIFAR-10.

    Args:
        embeddings_1: ``(B, D)`` projections of the first view of each image (normalised here).
        embeddings_2: ``(B, D)`` projections of the second view; row i pairs with row i above.
        temperature: tau > 0.
        gather_distributed: take the negatives from every process's views, with gradients
            flowing back to their owners (2 * B * world_size views in all).

    Returns:
        Scalar: the mean over this process's 2B anchors.
    """
    check_pair(embeddings_1, embeddings_2, "embeddings_1", "embeddings_2")
    check_positive(temperature, "temperature")
    view_1, view_2 = normalized(embeddings_1), normalized(embeddings_2)
    all_view_1 = gather_with_grad(view_1) if gather_distributed else view_1  # (N, D)
    all_view_2 = gather_with_grad(view_2) if gather_distributed else view_2
    global_batch = all_view_1.shape[0]
    candidates = torch.cat([all_view_1, all_view_2])  # (2N, D): all first views, then all second views
    anchors = torch.cat([view_1, view_2])  # (2B, D)
    logits = anchors @ candidates.T / temperature  # (2B, 2N)

    own_rows = global_row_indices(view_1.shape[0], gather_distributed, view_1.device)
    anchor_index = torch.cat([own_rows, own_rows + global_batch])
    positive_index = torch.cat([own_rows + global_batch, own_rows])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(len(anchor_index), device=logits.device), anchor_index] = True
    logits = logits.masked_fill(is_self, float("-inf"))  # an anchor is never its own negative
    return F.cross_entropy(logits, positive_index)


def moco_v3_loss(
    query_1: torch.Tensor,
    query_2: torch.Tensor,
    key_1: torch.Tensor,
    key_2: torch.Tensor,
    temperature: float = 0.2,
    gather_distributed: bool = True,
) -> torch.Tensor:
    """MoCo v3's symmetrised contrastive loss (Chen, Xie, He 2021, arXiv:2104.02057).

    Transcribes facebookresearch/moco-v3 moco/builder.py ``MoCo.contrastive_loss``:

        ctr(q, k) = CrossEntropy(q . k_all^T / tau, labels) * 2 tau,
        loss = ctr(q_1, k_2) + ctr(q_2, k_1),

    q and k L2-normalised, k_all the keys of every process, label of local row i = its global
    row (rank * B + i); the factor 2 tau is the official code's. Keys come from the momentum
    encoder: they are detached here and gathered WITHOUT gradient, as in the official
    ``concat_all_gather``.

    Temperature: 0.2 is the paper's and README's setting for ViT; the official code's default
    ``--moco-t`` is 1.0, the ResNet-50 setting.

    Args:
        query_1: ``(B, D)`` predictor outputs of the base encoder for view 1.
        query_2: ``(B, D)`` the same for view 2.
        key_1: ``(B, D)`` momentum-encoder projections of view 1 (no gradient flows into them).
        key_2: ``(B, D)`` the same for view 2.
        temperature: tau > 0.
        gather_distributed: use the keys of every process as negatives.

    Returns:
        Scalar: the sum of the two directions, each averaged over this process's B queries.
    """
    for name, tensor in (("query_2", query_2), ("key_1", key_1), ("key_2", key_2)):
        check_pair(query_1, tensor, "query_1", name)
    check_positive(temperature, "temperature")

    def contrastive(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return matched_rows_cross_entropy(normalized(query), normalized(key.detach()), 1 / temperature,
                                          gather_distributed) * (2 * temperature)

    return contrastive(query_1, key_2) + contrastive(query_2, key_1)


def byol_loss(
    prediction_1: torch.Tensor,
    prediction_2: torch.Tensor,
    target_1: torch.Tensor,
    target_2: torch.Tensor,
) -> torch.Tensor:
    """BYOL's symmetrised normalised MSE (Grill et al. 2020, arXiv:2006.07733, Eq. 2).

    With p the online network's predictions and z the target network's projections,
    ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``; the loss pairs each view's prediction with the
    OTHER view's target and sums the two directions (the paper's L + L~, as in the official
    byol_experiment.py), averaged over the batch. Targets get a stop-gradient (they come from
    the EMA target network). No batch-level term: nothing is gathered across processes.

    Args:
        prediction_1: ``(B, D)`` online predictor output for view 1.
        prediction_2: ``(B, D)`` online predictor output for view 2.
        target_1: ``(B, D)`` target-network projection of view 1 (detached here).
        target_2: ``(B, D)`` target-network projection of view 2 (detached here).

    Returns:
        Scalar in [0, 8].
    """
    for name, tensor in (("prediction_2", prediction_2), ("target_1", target_1), ("target_2", target_2)):
        check_pair(prediction_1, tensor, "prediction_1", name)

    def regression(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 2 - 2 * (normalized(prediction) * normalized(target.detach())).sum(dim=-1)  # (B,)

    return (regression(prediction_1, target_2) + regression(prediction_2, target_1)).mean()


def simsiam_loss(
    prediction_1: torch.Tensor,
    prediction_2: torch.Tensor,
    projection_1: torch.Tensor,
    projection_2: torch.Tensor,
) -> torch.Tensor:
    """SimSiam's symmetrised negative cosine similarity (Chen & He 2020, arXiv:2011.10566, Eq. 4).

        loss = 1/2 D(p_1, stopgrad(z_2)) + 1/2 D(p_2, stopgrad(z_1)),   D(p, z) = -cos(p, z),

    averaged over the batch, as in facebookresearch/simsiam main_simsiam.py. The stop-gradient
    on the projections is what prevents collapse; it is applied here. Nothing is gathered.

    Args:
        prediction_1: ``(B, D)`` predictor output for view 1.
        prediction_2: ``(B, D)`` predictor output for view 2.
        projection_1: ``(B, D)`` projector output for view 1 (detached here).
        projection_2: ``(B, D)`` projector output for view 2 (detached here).

    Returns:
        Scalar in [-1, 1]; -1 when predictions match the other view's projection.
    """
    others = (("prediction_2", prediction_2), ("projection_1", projection_1), ("projection_2", projection_2))
    for name, tensor in others:
        check_pair(prediction_1, tensor, "prediction_1", name)

    def negative_cosine(prediction: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        return -(normalized(prediction) * normalized(projection.detach())).sum(dim=-1).mean()

    return 0.5 * (negative_cosine(prediction_1, projection_2) + negative_cosine(prediction_2, projection_1))


def _global_standardize(
    views: torch.Tensor, global_rows: torch.Tensor, gather_distributed: bool, eps: float
) -> torch.Tensor:
    """Batch-normalise every feature with the mean and biased variance of the global batch.

    Args:
        views: ``(V, B, D)`` local rows of V views.
        global_rows: scalar, the number of rows per view over all processes.

    Returns:
        ``(V, B, D)``, as BatchNorm1d(affine=False) in training mode over the global batch.
    """
    reduce = all_reduce_sum_with_grad if gather_distributed else (lambda tensor: tensor)
    mean = reduce(views.sum(dim=1, keepdim=True)) / global_rows  # (V, 1, D)
    centred = views - mean
    variance = reduce(centred.pow(2).sum(dim=1, keepdim=True)) / global_rows
    return centred / torch.sqrt(variance + eps)


class BarlowTwinsLossTerms(NamedTuple):
    """Barlow Twins' weighted total and its two unweighted terms (log them to watch for collapse)."""

    loss: torch.Tensor
    on_diagonal: torch.Tensor
    off_diagonal: torch.Tensor


def sum_of_squared_cross_products(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``||first^T second||_F^2`` for ``(N, D)`` inputs, through whichever of two equal forms is cheaper.

    ``sum_ij (sum_b f_bi s_bj)^2 = sum_bc (f f^T)_bc (s s^T)_bc``: the ``(D, D)`` cross-product
    matrix costs ``N D^2`` multiply-adds and ``D^2`` memory, the two ``(N, N)`` Gram matrices
    ``2 N^2 D`` and ``N^2``. With the published 8192-wide projectors and a per-device batch of a
    few hundred, the Gram form does a fraction of the work and never holds the 256 MiB matrix;
    the value is the same up to rounding (tests compare both forms).

    Passing the same tensor twice (a covariance, ``||f^T f||_F^2``) takes one Gram matrix, so that
    form is then cheaper whenever N <= D.

    Returns:
        Scalar, in the dtype of the inputs.
    """
    rows, dimensions = first.shape
    if second is first:
        return (first @ first.T).pow(2).sum() if rows <= dimensions else (first.T @ first).pow(2).sum()
    if 2 * rows <= dimensions:
        return ((first @ first.T) * (second @ second.T)).sum()
    return (first.T @ second).pow(2).sum()


def barlow_twins_loss_terms(
    embeddings_1: torch.Tensor,
    embeddings_2: torch.Tensor,
    redundancy_weight: float = 5e-3,
    gather_distributed: bool = True,
    eps: float = 1e-5,
) -> BarlowTwinsLossTerms:
    """Barlow Twins' cross-correlation loss (Zbontar et al. 2021, arXiv:2103.03230, Eq. 1-2).

    Each embedding dimension is batch-normalised over the GLOBAL batch of N rows (mean and
    biased variance, as ``BatchNorm1d(affine=False)`` under SyncBatchNorm in the official
    facebookresearch/barlowtwins main.py), then

        C_ij = 1/N sum_b zhat1_bi zhat2_bj,
        on_diagonal  = sum_i (1 - C_ii)^2,
        off_diagonal = sum_{i != j} C_ij^2 = ||C||_F^2 - sum_i C_ii^2,
        loss = on_diagonal + lambda * off_diagonal.

    C itself is never needed: its diagonal is a column-wise dot product, and in one process
    ``||C||_F^2`` comes from the two ``(N, N)`` Gram matrices when that is cheaper
    (`sum_of_squared_cross_products`), which for the published D = 8192 it is whenever N <= 4096.
    Across processes the statistics and the ``(D, D)`` matrix C are all-reduced with gradients
    (processes may hold different row counts, which a gather of rows could not take). The
    official code all-reduces C without autograd, so under DDP averaging its parameter gradients
    are 1/world_size of the single-process gradient; here they are equal to it.

    Args:
        embeddings_1: ``(B, D)`` projections of view 1 (the paper: D = 8192).
        embeddings_2: ``(B, D)`` projections of view 2.
        redundancy_weight: lambda, the weight of the off-diagonal term (paper: 5e-3).
        gather_distributed: normalise and correlate over every process's rows. Local batch
            sizes may differ between processes.
        eps: added to the variance, BatchNorm1d's default.

    Returns:
        `BarlowTwinsLossTerms` ``(loss, on_diagonal, off_diagonal)``, equal on every process; the
        two terms are unweighted.
    """
    check_pair(embeddings_1, embeddings_2, "embeddings_1", "embeddings_2")
    check_positive(eps, "eps")
    views = to_compute_dtype(torch.stack([embeddings_1, embeddings_2]))  # (2, B, D)
    local_rows = torch.tensor(float(views.shape[1]), dtype=views.dtype, device=views.device)
    distributed = gather_distributed and is_distributed()
    global_rows = all_reduce_sum_with_grad(local_rows) if distributed else local_rows
    standardized_1, standardized_2 = _global_standardize(views, global_rows, distributed, eps)
    # Dividing the (B, D) factor instead of the (D, D) product: D / B times fewer divisions.
    standardized_1 = standardized_1 / global_rows
    if distributed:
        correlation = all_reduce_sum_with_grad(standardized_1.T @ standardized_2)  # (D, D)
        diagonal = torch.diagonal(correlation)
        squared_sum = correlation.pow(2).sum()
    else:
        diagonal = (standardized_1 * standardized_2).sum(dim=0)  # (D,) = C_ii
        squared_sum = sum_of_squared_cross_products(standardized_1, standardized_2)
    on_diagonal = (1 - diagonal).pow(2).sum()
    off_diagonal = squared_sum - diagonal.pow(2).sum()
    return BarlowTwinsLossTerms(loss=on_diagonal + redundancy_weight * off_diagonal, on_diagonal=on_diagonal,
                                off_diagonal=off_diagonal)


def barlow_twins_loss(
    embeddings_1: torch.Tensor,
    embeddings_2: torch.Tensor,
    redundancy_weight: float = 5e-3,
    gather_distributed: bool = True,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The scalar loss of `barlow_twins_loss_terms` (same arguments):
    ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` over the global batch."""
    return barlow_twins_loss_terms(embeddings_1, embeddings_2, redundancy_weight, gather_distributed, eps).loss


class VICRegLossTerms(NamedTuple):
    """VICReg's weighted total and its three unweighted terms (log them to watch for collapse)."""

    loss: torch.Tensor
    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def vicreg_loss(
    embeddings_1: torch.Tensor,
    embeddings_2: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gather_distributed: bool = True,
    eps: float = 1e-4,
) -> VICRegLossTerms:
    """VICReg: variance-invariance-covariance regularisation (Bardes et al. 2021, arXiv:2105.04906).

    Transcribes facebookresearch/vicreg main_vicreg.py ``VICReg.forward`` on the global batch of N
    rows (embeddings gathered with gradients, as its ``FullGatherLayer``), d dimensions:

        invariance = mean_{b,j} (z1_bj - z2_bj)^2
        variance   = 1/2 [ mean_j relu(1 - sqrt(Var_b z1_j + eps)) + the same for z2 ]
        covariance = 1/d sum_{i != j} Cov(z1)_ij^2 + 1/d sum_{i != j} Cov(z2)_ij^2
        loss       = 25 invariance + 25 variance + 1 covariance

    with the unbiased variance and covariance (divided by N - 1). ``sum_{i != j} Cov_ij^2`` is
    ``||Cov||_F^2 - sum_j Var_j^2``, and ``||Cov||_F^2`` comes from the ``(N, N)`` Gram matrix of the
    centred rows whenever N <= D (`sum_of_squared_cross_products`): the ``(D, D)`` covariance is
    never formed at the published sizes. The official code halves the
    variance term but not the covariance term (the paper's Eq. 6 sums both); the 25/25/1
    weights were tuned on the official code, which is followed here. The official code takes
    the invariance term over each process's own rows; here it covers the gathered batch, which
    has the same mean and gradient, so every process returns the same values.

    Args:
        embeddings_1: ``(B, D)`` expander outputs of view 1 (the paper: D = 8192).
        embeddings_2: ``(B, D)`` expander outputs of view 2.
        invariance_weight: lambda (paper: 25).
        variance_weight: mu (paper: 25).
        covariance_weight: nu (paper: 1).
        gather_distributed: compute every term over the rows of every process.
        eps: added to the variance before the square root (paper: 1e-4).

    Returns:
        `VICRegLossTerms` ``(loss, invariance, variance, covariance)``; the three terms are
        unweighted.
    """
    check_pair(embeddings_1, embeddings_2, "embeddings_1", "embeddings_2")
    check_positive(eps, "eps")
    first, second = to_compute_dtype(embeddings_1), to_compute_dtype(embeddings_2)
    if gather_distributed:
        first, second = gather_with_grad(first), gather_with_grad(second)  # (N, D)
    global_rows, dimensions = first.shape
    if global_rows < 2:
        raise ValueError(f"vicreg_loss needs at least 2 rows in the (global) batch for variances, got {global_rows}")

    invariance = F.mse_loss(first, second)

    def variance_and_covariance(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centred = embeddings - embeddings.mean(dim=0)
        variance = centred.pow(2).sum(dim=0) / (global_rows - 1)  # (D,): the diagonal of Cov
        standard_deviation = torch.sqrt(variance + eps)
        # ||Cov||_F^2 without the (D, D) matrix when the Gram form is cheaper (sum_of_squared_cross_products).
        scaled = centred / (global_rows - 1) ** 0.5
        off_diagonal = sum_of_squared_cross_products(scaled, scaled) - variance.pow(2).sum()
        return F.relu(1 - standard_deviation).mean(), off_diagonal / dimensions

    variance_1, covariance_1 = variance_and_covariance(first)
    variance_2, covariance_2 = variance_and_covariance(second)
    variance = (variance_1 + variance_2) / 2
    covariance = covariance_1 + covariance_2
    loss = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    return VICRegLossTerms(loss=loss, invariance=invariance, variance=variance, covariance=covariance)
