"""Linear centred kernel alignment (CKA) between representations.

Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited", arXiv:1905.00414,
Eq. (5): with X (n, p1) and Y (n, p2) holding the same n examples, columns centred,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It is 1 for X against itself, invariant to orthogonal transforms and isotropic scaling of
either side, and comparable across layers of different widths. Xie et al. 2022 (arXiv:2205.13543)
use it to compare the layers of MIM, contrastive and supervised ViTs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _centred(features: torch.Tensor, name: str) -> torch.Tensor:
    if features.ndim != 2:
        raise ValueError(f"{name} must be (examples, features), got shape {tuple(features.shape)}")
    features = features.double()
    return features - features.mean(dim=0, keepdim=True)


def _alignment(cross: torch.Tensor, norm_x: torch.Tensor, norm_y: torch.Tensor) -> torch.Tensor:
    denominator = norm_x * norm_y
    if denominator == 0:
        return torch.zeros((), dtype=torch.float64)
    return cross / denominator


def linear_cka(features_x: torch.Tensor, features_y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two representations of the same examples.

    Args:
        features_x: ``(n, p1)``; features_y: ``(n, p2)``, row i of both describing example i.

    Returns:
        scalar float64 in [0, 1] (0 when either side is constant).
    """
    x = _centred(features_x, "features_x")  # (n, p1)
    y = _centred(features_y, "features_y")  # (n, p2)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features_x and features_y must have the same examples, got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[1] + y.shape[1] > 2 * x.shape[0]:
        # ||Y^T X||_F^2 = <X X^T, Y Y^T>: the (n, n) Gram form is cheaper when p > n.
        gram_x, gram_y = x @ x.T, y @ y.T  # (n, n)
        return _alignment((gram_x * gram_y).sum(), gram_x.norm(), gram_y.norm())
    return _alignment((y.T @ x).square().sum(), (x.T @ x).norm(), (y.T @ y).norm())


def cka_matrix(
    representations: Sequence[torch.Tensor], other_representations: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """Linear CKA between every layer of one model and every layer of another (or itself).

    Args:
        representations: L tensors ``(n, p_l)``, one per layer, the same n examples in each.
        other_representations: M tensors ``(n, q_m)`` of the same examples; None compares
            `representations` with itself (a symmetric matrix with ones on the diagonal).

    Returns:
        ``(L, M)`` float64, entry (l, m) = CKA(layer l, other layer m).
    """
    if len(representations) == 0:
        raise ValueError("representations is empty")
    symmetric = other_representations is None
    others = list(representations if symmetric else other_representations)
    if len(others) == 0:
        raise ValueError("other_representations is empty")
    layers = list(representations) + ([] if symmetric else others)
    examples = {features.shape[0] for features in layers}
    if len(examples) != 1:
        raise ValueError(f"every representation must hold the same examples, got row counts {sorted(examples)}")
    if min(features.shape[1] for features in layers) > next(iter(examples)):
        # Wide representations (e.g. every token of an image flattened): one centred Gram matrix
        # (n, n) per layer, then each pair costs O(n^2).
        grams = [_centred(features, "representations") for features in layers]
        grams = [centred @ centred.T for centred in grams]  # (n, n) each
        norms = [gram.norm() for gram in grams]
        offset = 0 if symmetric else len(representations)
        matrix = torch.zeros(len(representations), len(others), dtype=torch.float64)
        for row in range(len(representations)):
            for column in range(len(others)):
                matrix[row, column] = _alignment((grams[row] * grams[offset + column]).sum(), norms[row], norms[offset + column])
        return matrix
    matrix = torch.zeros(len(representations), len(others), dtype=torch.float64)
    for row, features in enumerate(representations):
        for column, other in enumerate(others):
            if symmetric and column < row:
                matrix[row, column] = matrix[column, row]
            else:
                matrix[row, column] = linear_cka(features, other)
    return matrix
