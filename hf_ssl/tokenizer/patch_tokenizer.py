"""SplitMask's patch tokenizer: discrete MIM targets without a learned dVAE.

El-Nouby et al. 2021, arXiv:2112.10740, section 3: every patch is downsampled to a small vector
(8 x 8 x 3 = 192 values); a vocabulary of V vectors e_i is built from the training data (k-means,
or simply random data patches, or uniform random vectors), and a patch's token is
``argmax_i x^T e_i``. Codebook vectors are kept at unit norm, which makes that argmax the
assignment rule of spherical k-means, so fitting and tokenizing use the same criterion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

CodebookInit = Literal["kmeans", "random_patches", "uniform"]


def patch_vectors(pixel_values: torch.Tensor, patch_size: int, resolution: int = 8) -> torch.Tensor:
    """Downsample every ``patch_size`` patch to ``resolution x resolution`` and flatten it.

    Args:
        pixel_values: ``(B, C, H, W)`` images; H and W divisible by `patch_size`.
        patch_size: the model's patch size P.
        resolution: side r of the downsampled patch (the paper uses 8).

    Returns:
        ``(B, N, C * r * r)`` with N = (H / P) * (W / P), patches in row-major order.
    """
    batch_size, channels, height, width = pixel_values.shape
    grid_height, grid_width = height // patch_size, width // patch_size
    # Area pooling of the whole image onto a (grid * r) lattice = per-patch downsampling.
    small = F.adaptive_avg_pool2d(pixel_values.float(), (grid_height * resolution, grid_width * resolution))
    small = small.reshape(batch_size, channels, grid_height, resolution, grid_width, resolution)
    return small.permute(0, 2, 4, 1, 3, 5).reshape(batch_size, grid_height * grid_width, -1)


def assign_tokens(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``argmax_i x^T e_i`` for every row x of `vectors` ``(..., d)``; returns ``(...)`` long."""
    return (vectors @ codebook.T).argmax(dim=-1)


def quantization_error(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between unit-normalised vectors ``(M, d)`` and their assigned code.

    For unit vectors that is ``2 - 2 cos``: the spherical k-means objective.
    """
    unit = F.normalize(vectors, dim=-1)
    best_cosine = (unit @ codebook.T).max(dim=-1).values
    return (2 - 2 * best_cosine).mean()


def codebook_fingerprint(codebook: torch.Tensor) -> str:
    """Short content hash of a codebook; stored in the config to version the tokenizer."""
    data = codebook.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _sample_rows(vectors: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    index = torch.randint(0, vectors.shape[0], (count,), generator=generator)
    return vectors[index]


def fit_kmeans_codebook(
    vector_batches: Iterable[torch.Tensor],
    vocab_size: int,
    num_epochs: int = 3,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[float]]:
    """Mini-batch spherical k-means (Sculley 2010 updates) over batches of patch vectors.

    Each centre moves towards the mean of the vectors assigned to it with a step of
    ``batch_count / total_count``, then is renormalised; centres that have never won a vector
    after an epoch are re-seeded from random vectors. Everything is batched tensor algebra.

    Args:
        vector_batches: a re-iterable (e.g. a list) of ``(M, d)`` tensors, visited `num_epochs`
            times.
        vocab_size: number of centres V.
        num_epochs: passes over `vector_batches`.
        generator: RNG for initialisation and re-seeding.

    Returns:
        ``(codebook (V, d) unit rows, per-batch quantization error before each update)``.
    """
    batches = [F.normalize(batch.float().reshape(-1, batch.shape[-1]), dim=-1) for batch in vector_batches]
    if not batches:
        raise ValueError("fit_kmeans_codebook needs at least one batch of patch vectors")
    pool = torch.cat(batches[: max(1, len(batches) // 4 + 1)])
    codebook = _sample_rows(pool, vocab_size, generator)
    codebook = F.normalize(codebook + 1e-3 * torch.randn(codebook.shape, generator=generator), dim=-1)
    total_counts = torch.zeros(vocab_size)
    errors: list[float] = []

    steps = tqdm(total=num_epochs * len(batches), desc="fitting patch tokenizer (k-means)", disable=not progress)
    for _epoch in range(num_epochs):
        for batch in batches:
            cosine = batch @ codebook.T  # (M, V)
            best_cosine, assignment = cosine.max(dim=-1)
            errors.append(float((2 - 2 * best_cosine).mean()))
            batch_counts = torch.bincount(assignment, minlength=vocab_size).float()  # (V,)
            sums = torch.zeros_like(codebook).index_add_(0, assignment, batch)  # (V, d)
            total_counts += batch_counts
            won = batch_counts > 0
            step = (batch_counts / total_counts.clamp(min=1)).unsqueeze(1)  # (V, 1)
            batch_means = sums / batch_counts.clamp(min=1).unsqueeze(1)
            updated = codebook + step * (batch_means - codebook)
            codebook = torch.where(won.unsqueeze(1), F.normalize(updated, dim=-1), codebook)
            steps.update(1)
        dead = total_counts == 0
        if bool(dead.any()):
            codebook[dead] = _sample_rows(torch.cat(batches), int(dead.sum()), generator)
    steps.close()
    return codebook, errors


def random_patch_codebook(
    vector_batches: Iterable[torch.Tensor], vocab_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Vocabulary of random data patches (the paper's cheaper alternative); ``(V, d)`` unit rows."""
    vectors = torch.cat([batch.float().reshape(-1, batch.shape[-1]) for batch in vector_batches])
    return F.normalize(_sample_rows(vectors, vocab_size, generator), dim=-1)


def uniform_codebook(vocab_size: int, dimension: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Vocabulary of random directions, independent of the data; ``(V, d)`` unit rows."""
    return F.normalize(torch.rand(vocab_size, dimension, generator=generator) * 2 - 1, dim=-1)


class PatchTokenizer(nn.Module):
    """Maps images to one discrete token per patch with a fixed codebook.

    The codebook is a persistent buffer, so `save_pretrained` writes it into the model's
    safetensors file and `from_pretrained` restores it.

    Args:
        vocab_size: number of tokens V.
        patch_size: the model's patch size P.
        resolution: side r of the downsampled patch; the vector size is ``num_channels * r * r``.
        num_channels: image channels C.
    """

    def __init__(self, vocab_size: int, patch_size: int, resolution: int = 8, num_channels: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.resolution = resolution
        self.register_buffer("codebook", torch.zeros(vocab_size, num_channels * resolution * resolution))

    @property
    def vocab_size(self) -> int:
        return self.codebook.shape[0]

    def vectors(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, N, d)`` downsampled patch vectors."""
        return patch_vectors(pixel_values, self.patch_size, self.resolution)

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, N)`` long token ids, in fp32 whatever the autocast around it.

        The targets must not depend on the training precision: under bf16 autocast the similarity
        matmul rounds to 8 bits of mantissa, near-equal codes tie, and argmax then picks the first
        of them, a coarser target (SplitMask's bf16 runs of the bundled data fell to a 0.07-0.16
        lower MIM loss, measured, from easier targets, not better learning).
        """
        with torch.autocast(pixel_values.device.type, enabled=False):
            return assign_tokens(self.vectors(pixel_values.float()), self.codebook.float())

    @torch.no_grad()
    def fit(
        self,
        image_batches: Iterable[torch.Tensor],
        method: CodebookInit = "kmeans",
        num_epochs: int = 3,
        max_vectors_per_batch: int = 65536,
        seed: int = 0,
        progress: bool = True,
    ) -> list[float]:
        """Build the codebook from images and return the k-means error history (empty otherwise).

        Args:
            image_batches: iterable of ``(B, C, H, W)`` pixel batches from the training data,
                read once; their patch vectors are kept in memory (subsampled to
                `max_vectors_per_batch` per batch).
            method: ``"kmeans"`` (default), ``"random_patches"`` or ``"uniform"``.
            num_epochs: k-means passes over the collected vectors.
            seed: seed of the fitting RNG.
        """
        generator = torch.Generator().manual_seed(seed)
        dimension = self.codebook.shape[1]
        if method == "uniform":
            codebook, errors = uniform_codebook(self.vocab_size, dimension, generator), []
        else:
            vector_batches = []
            for pixel_values in image_batches:
                vectors = self.vectors(pixel_values.cpu()).reshape(-1, dimension)
                if vectors.shape[0] > max_vectors_per_batch:
                    vectors = vectors[torch.randperm(vectors.shape[0], generator=generator)[:max_vectors_per_batch]]
                vector_batches.append(vectors)
            if not vector_batches:
                raise ValueError("PatchTokenizer.fit received no image batches")
            if method == "kmeans":
                codebook, errors = fit_kmeans_codebook(vector_batches, self.vocab_size, num_epochs, generator, progress)
            elif method == "random_patches":
                codebook, errors = random_patch_codebook(vector_batches, self.vocab_size, generator), []
            else:
                raise ValueError(f"method must be 'kmeans', 'random_patches' or 'uniform', got {method!r}")
        self.codebook.copy_(codebook.to(self.codebook.dtype))
        return errors
