"""Discrete patch tokenizers for masked image modeling targets."""

from .patch_tokenizer import (
    PatchTokenizer,
    assign_tokens,
    codebook_fingerprint,
    fit_kmeans_codebook,
    patch_vectors,
    quantization_error,
    random_patch_codebook,
    uniform_codebook,
)

__all__ = [
    "PatchTokenizer",
    "assign_tokens",
    "codebook_fingerprint",
    "fit_kmeans_codebook",
    "patch_vectors",
    "quantization_error",
    "random_patch_codebook",
    "uniform_codebook",
]
