"""Collapse monitors: normalised embedding std and RankMe against hand-computed cases."""

import math

import pytest
import torch

from hf_ssl.monitoring import collapse_metrics, normalized_embedding_std, rank_me


def test_collapsed_embeddings_have_zero_std_and_rank_one():
    collapsed = torch.ones(8, 5) * torch.tensor([1.0, 2.0, 0.0, -1.0, 3.0])
    assert normalized_embedding_std(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert rank_me(collapsed).item() == pytest.approx(1.0, abs=1e-3)


def test_orthonormal_rows_have_full_rank():
    # four orthonormal rows: singular values 1, 1, 1, 1 -> p = 1/4 -> exp(log 4) = 4
    assert rank_me(torch.eye(4)).item() == pytest.approx(4.0, rel=1e-4)
    # two singular values 3 and 1: p = (3/4, 1/4) -> exp(-(0.75 log 0.75 + 0.25 log 0.25))
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert rank_me(torch.diag(torch.tensor([3.0, 1.0]))).item() == pytest.approx(expected, rel=1e-4)


def test_isotropic_embeddings_have_std_near_one():
    embeddings = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    # each coordinate of a uniform point on the sphere has variance 1/D: sqrt(D) * std ~ 1
    assert normalized_embedding_std(embeddings).item() == pytest.approx(1.0, abs=0.03)
    metrics = collapse_metrics(embeddings)
    assert set(metrics) == {"embedding_std", "embedding_rank"} and 15 < metrics["embedding_rank"].item() <= 16


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="embeddings must be"):
        normalized_embedding_std(torch.randn(1, 4))
    with pytest.raises(ValueError, match="embeddings must be"):
        rank_me(torch.randn(4))
