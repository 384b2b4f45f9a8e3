"""Model-level analyses: attention statistics per layer and head, layer representations, CLS maps.

Each function runs a prepared ViT encoder (`hf_ssl.analysis.encoders.prepare_vit`) over
pixel values in batches and reduces with the tensor functions of `attention`, `cka` and `maps`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .attention import (
    attention_entropy,
    average_attention_distance,
    pairwise_head_kl_divergence,
    patch_attention,
    patch_centre_distances,
    prefix_attention_share,
)
from .cka import cka_matrix
from .encoders import AnalysisInputError, PatchGrid, encode
from .maps import DINO_MASK_MASS, attention_mass_masks, cls_attention_maps

RepresentationPooling = Literal["flatten", "tokens", "mean", "cls"]
REPRESENTATION_POOLINGS = ("flatten", "tokens", "mean", "cls")


@dataclass
class AttentionStatistics:
    """Per-layer, per-head attention statistics over a set of images (Xie et al. 2022).

    Args:
        attention_distance: ``(L, H)`` average attention distance in pixels.
        attention_entropy: ``(L, H)`` mean entropy in nats of the patch-to-patch attention.
        pairwise_head_kl_divergence: ``(L, H, H)`` mean KL(head i || head j).
        prefix_attention_share: ``(L, H)`` mass patch queries give to prefix tokens (before
            the patch-to-patch rows are renormalised).
        grid: the patch grid; num_images: images averaged over.
    """

    attention_distance: torch.Tensor
    attention_entropy: torch.Tensor
    pairwise_head_kl_divergence: torch.Tensor
    prefix_attention_share: torch.Tensor
    grid: PatchGrid
    num_images: int

    @property
    def head_kl_divergence(self) -> torch.Tensor:
        """``(L,)`` mean KL over ordered pairs of distinct heads per layer."""
        heads = self.pairwise_head_kl_divergence.shape[-1]
        if heads < 2:
            return torch.zeros(self.pairwise_head_kl_divergence.shape[0], dtype=torch.float64)
        return self.pairwise_head_kl_divergence.sum(dim=(1, 2)) / (heads * (heads - 1))

    @property
    def uniform_attention_distance(self) -> float:
        """Average distance of attention spread evenly over all patches (the global extreme)."""
        return float(patch_centre_distances(self.grid.grid_height, self.grid.grid_width, self.grid.patch_size).mean())

    @property
    def uniform_attention_entropy(self) -> float:
        """Entropy of attention spread evenly over all patches: log(number of patches)."""
        return math.log(self.grid.num_patches)

    def to_dict(self) -> dict:
        """JSON-ready lists; per-layer lists are indexed [layer][head] (layer 0 = first block)."""
        return {
            "num_images": self.num_images,
            "num_layers": int(self.attention_distance.shape[0]),
            "num_heads": int(self.attention_distance.shape[1]),
            "grid": {
                "grid_height": self.grid.grid_height,
                "grid_width": self.grid.grid_width,
                "patch_size": self.grid.patch_size,
                "num_prefix_tokens": self.grid.num_prefix_tokens,
            },
            "prefix_tokens": "dropped as queries and keys; patch-to-patch rows renormalised to sum to 1",
            "attention_distance_pixels": self.attention_distance.tolist(),
            "attention_entropy_nats": self.attention_entropy.tolist(),
            "head_kl_divergence": self.head_kl_divergence.tolist(),
            "pairwise_head_kl_divergence": self.pairwise_head_kl_divergence.tolist(),
            "prefix_attention_share": self.prefix_attention_share.tolist(),
            "uniform_attention_distance_pixels": self.uniform_attention_distance,
            "uniform_attention_entropy_nats": self.uniform_attention_entropy,
        }


def _batches(pixel_values: torch.Tensor, batch_size: int):
    if pixel_values.ndim != 4 or pixel_values.shape[0] == 0:
        raise AnalysisInputError(f"pixel_values must be a non-empty (B, C, H, W) batch, got {tuple(pixel_values.shape)}")
    if batch_size < 1:
        raise AnalysisInputError(f"batch_size must be >= 1, got {batch_size}")
    return pixel_values.split(batch_size)


def attention_statistics(model: nn.Module, pixel_values: torch.Tensor, batch_size: int = 32) -> AttentionStatistics:
    """Attention distance, entropy, head KL and prefix share for every layer and head.

    Args:
        model: a prepared ViT encoder (eager attention).
        pixel_values: ``(N, 3, H, W)`` preprocessed images.
        batch_size: images per forward pass.
    """
    totals: dict[str, torch.Tensor] = {}
    grid = None
    for batch in _batches(pixel_values, batch_size):
        outputs = encode(model, batch)
        grid = outputs.grid
        per_layer = {"distance": [], "entropy": [], "kl": [], "prefix": []}
        for attentions in outputs.attentions:  # (B, H, T, T)
            patches = patch_attention(attentions, grid.num_prefix_tokens)  # (B, H, P, P)
            per_layer["distance"].append(
                average_attention_distance(patches, grid.grid_height, grid.grid_width, grid.patch_size)
            )
            per_layer["entropy"].append(attention_entropy(patches))
            per_layer["kl"].append(pairwise_head_kl_divergence(patches))
            per_layer["prefix"].append(prefix_attention_share(attentions, grid.num_prefix_tokens))
        # Every statistic is a mean over images, so batch means combine weighted by batch size.
        for name, values in per_layer.items():
            totals[name] = totals.get(name, 0) + torch.stack(values) * batch.shape[0]
    count = pixel_values.shape[0]
    return AttentionStatistics(
        attention_distance=totals["distance"] / count,
        attention_entropy=totals["entropy"] / count,
        pairwise_head_kl_divergence=totals["kl"] / count,
        prefix_attention_share=totals["prefix"] / count,
        grid=grid,
        num_images=count,
    )


def pool_representation(hidden_states: torch.Tensor, num_prefix_tokens: int, pooling: RepresentationPooling) -> torch.Tensor:
    """One layer's tokens ``(B, T, D)`` as CKA examples.

    Args:
        hidden_states: ``(B, T, D)``.
        num_prefix_tokens: prefix tokens before the patches.
        pooling: "mean": mean patch token ``(B, D)`` (the default of `layer_representations`);
            "cls": the first token ``(B, D)`` (constant at the embedding layer, CKA 0 there);
            "flatten": one example per image, all tokens concatenated ``(B, T*D)`` (the
            activation-map convention of Kornblith et al.); "tokens": one example per patch
            token ``(B*P, D)``. Measured on the default SplitMask run (4-layer ViT, 8-px patches,
            64 bundled digits): "flatten" and "tokens" give CKA >= 0.95 between every pair of
            layers, "mean" 0.43-0.99, so "mean" is the default.
    """
    if pooling == "flatten":
        return hidden_states.flatten(start_dim=1)
    if pooling == "tokens":
        return hidden_states[:, num_prefix_tokens:].reshape(-1, hidden_states.shape[-1])
    if pooling == "mean":
        return hidden_states[:, num_prefix_tokens:].mean(dim=1)
    if pooling == "cls":
        if num_prefix_tokens < 1:
            raise AnalysisInputError("pooling='cls' needs a CLS token; this encoder has none")
        return hidden_states[:, 0]
    raise AnalysisInputError(f"pooling must be one of {REPRESENTATION_POOLINGS}, got {pooling!r}")


def layer_representations(
    model: nn.Module, pixel_values: torch.Tensor, pooling: RepresentationPooling = "mean", batch_size: int = 32
) -> list[torch.Tensor]:
    """Every layer's representation of the images: the embeddings, then each block's output.

    Returns:
        L + 1 float32 tensors ``(n, p)`` (see `pool_representation` for n and p).
    """
    if pooling not in REPRESENTATION_POOLINGS:
        raise AnalysisInputError(f"pooling must be one of {REPRESENTATION_POOLINGS}, got {pooling!r}")
    layers: list[list[torch.Tensor]] = []
    for batch in _batches(pixel_values, batch_size):
        outputs = encode(model, batch)
        pooled = [pool_representation(hidden, outputs.grid.num_prefix_tokens, pooling) for hidden in outputs.hidden_states]
        if not layers:
            layers = [[] for _ in pooled]
        for store, features in zip(layers, pooled):
            store.append(features)
    return [torch.cat(store) for store in layers]


def representation_cka(
    model: nn.Module,
    pixel_values: torch.Tensor,
    other_model: nn.Module | None = None,
    other_pixel_values: torch.Tensor | None = None,
    pooling: RepresentationPooling = "mean",
    batch_size: int = 32,
) -> torch.Tensor:
    """Linear CKA between the layers of `model` (and `other_model`, on the same images).

    Args:
        model: a prepared ViT encoder.
        pixel_values: ``(N, 3, H, W)`` images as `model` expects them.
        other_model: a second prepared encoder, or None to compare `model` with itself.
        other_pixel_values: the same N images preprocessed for `other_model` (default:
            `pixel_values`).
        pooling: see `pool_representation`; "tokens" needs both models to have as many patches.

    Returns:
        ``(L1 + 1, L2 + 1)`` float64; row / column 0 is the embedding output.
    """
    representations = layer_representations(model, pixel_values, pooling, batch_size)
    if other_model is None:
        return cka_matrix(representations)
    other_pixel_values = pixel_values if other_pixel_values is None else other_pixel_values
    if other_pixel_values.shape[0] != pixel_values.shape[0]:
        raise AnalysisInputError(
            f"both models must see the same images, got {pixel_values.shape[0]} and {other_pixel_values.shape[0]}"
        )
    return cross_model_cka(representations, layer_representations(other_model, other_pixel_values, pooling, batch_size))


def cross_model_cka(representations: list[torch.Tensor], other_representations: list[torch.Tensor]) -> torch.Tensor:
    """`cka_matrix` between two models' `layer_representations` of the same images.

    Raises:
        AnalysisInputError: the two sides have different numbers of examples (pooling "tokens"
            on models with different patch grids).
    """
    if representations[0].shape[0] != other_representations[0].shape[0]:
        raise AnalysisInputError(
            f"the two models give {representations[0].shape[0]} and {other_representations[0].shape[0]} examples "
            "(pooling 'tokens' on different patch grids); use pooling 'flatten', 'mean' or 'cls'"
        )
    return cka_matrix(representations, other_representations)


@dataclass
class ClsAttentionMaps:
    """Last-layer CLS attention per head and its DINO masks, for a batch of images.

    Args:
        maps: ``(B, H, h, w)`` CLS-to-patch attention probabilities.
        masks: ``(B, H, h, w)`` bool, the patches keeping `mass` of each map.
        mass: the kept attention mass; grid: the patch grid.
    """

    maps: torch.Tensor
    masks: torch.Tensor
    mass: float
    grid: PatchGrid


def cls_attention(
    model: nn.Module, pixel_values: torch.Tensor, mass: float = DINO_MASK_MASS, batch_size: int = 32
) -> ClsAttentionMaps:
    """DINO's last-layer CLS attention maps and zero-shot masks (Caron et al. 2021, arXiv:2104.14294)."""
    maps, grid = [], None
    for batch in _batches(pixel_values, batch_size):
        outputs = encode(model, batch)
        grid = outputs.grid
        if grid.num_prefix_tokens < 1:
            raise AnalysisInputError("CLS attention maps need an encoder with a CLS token")
        maps.append(cls_attention_maps(outputs.attentions[-1], grid.grid_height, grid.grid_width, grid.num_prefix_tokens))
    maps = torch.cat(maps)  # (B, H, h, w)
    return ClsAttentionMaps(maps=maps, masks=attention_mass_masks(maps, mass), mass=mass, grid=grid)
