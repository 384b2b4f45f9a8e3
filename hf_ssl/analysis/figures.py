"""Figures of the attention analysis (matplotlib, Agg backend): PNG files a person can scan.

- `plot_per_head_statistic`: one dot series per head, layers on the x axis (attention
  distance / entropy, as in Xie et al. 2022, arXiv:2205.13543, Fig. 2-3), the head mean as a
  black line and the uniform-attention value as a dashed reference.
- `plot_head_kl_divergence`: mean KL between heads per layer (Fig. 4 there).
- `plot_cka_matrix`: CKA heat map, one model against itself or two models.
- `attention_overlay` / `mask_overlay` / `save_attention_grid`: DINO-style CLS attention maps
  (Caron et al. 2021, arXiv:2104.14294) over the image, one panel per head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Small images (32 px digits) are enlarged to at least this side in the per-head PNGs.
MINIMUM_DISPLAY_SIDE = 256
MASK_COLOUR = np.array([1.0, 0.25, 0.1])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def layer_labels(count: int, with_embeddings: bool) -> list[str]:
    """Axis labels: "emb" for the embedding output, then layers numbered from 1."""
    return (["emb"] if with_embeddings else []) + [str(layer) for layer in range(1, count + 1 - int(with_embeddings))]


def plot_per_head_statistic(
    values: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    ylabel: str,
    title: str,
    reference: float | None = None,
    reference_label: str = "uniform attention",
) -> Path:
    """Dots per head (one colour each, thin line through a head's layers), layers on x.

    Args:
        values: ``(L, H)`` a statistic per layer and head.
        path: output PNG.
        ylabel, title: axis label and title.
        reference: a horizontal dashed line (e.g. the value of uniform attention), or None.
    """
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be (layers, heads), got shape {values.shape}")
    layers, heads = values.shape
    positions = np.arange(1, layers + 1)
    figure, axis = plt.subplots(figsize=(max(5.0, 0.45 * layers + 2.5), 3.8))
    colours = plt.get_cmap("tab20" if heads > 10 else "tab10")
    for head in range(heads):
        axis.plot(positions, values[:, head], marker="o", markersize=4, linewidth=0.6, alpha=0.8,
                  color=colours(head % colours.N), label=f"head {head}" if heads <= 12 else None)
    axis.plot(positions, values.mean(axis=1), color="black", linewidth=2, label="mean of heads")
    if reference is not None:
        axis.axhline(reference, color="grey", linestyle="--", linewidth=1, label=reference_label)
    axis.set_xticks(positions)
    axis.set_xlabel("layer")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    # Distances and entropies are >= 0; starting at 0 keeps near-equal heads from looking spread.
    axis.set_ylim(bottom=0, top=max(values.max(), reference or 0) * 1.1 or 1.0)
    axis.ticklabel_format(axis="y", useOffset=False)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2 if heads > 6 else 1, loc="best", framealpha=0.7)
    figure.tight_layout()
    return _save(figure, path)


def plot_head_kl_divergence(values: torch.Tensor | np.ndarray, path: str | os.PathLike, title: str) -> Path:
    """Mean KL divergence between the heads of each layer, layers on x.

    Args:
        values: ``(L,)`` mean pairwise KL per layer.
        path: output PNG.
    """
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    positions = np.arange(1, len(values) + 1)
    figure, axis = plt.subplots(figsize=(max(5.0, 0.45 * len(values) + 2.5), 3.5))
    axis.plot(positions, values, marker="o", color="tab:purple")
    axis.set_xticks(positions)
    axis.set_xlabel("layer")
    axis.set_ylabel("mean KL between heads (nats)")
    axis.set_title(title)
    axis.set_ylim(bottom=0, top=max(values.max(), 0) * 1.1 or 1.0)
    axis.ticklabel_format(axis="y", useOffset=False)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def plot_cka_matrix(
    matrix: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    title: str,
    row_name: str = "layer",
    column_name: str = "layer",
) -> Path:
    """Heat map of a CKA matrix (0 to 1), row / column 0 being the embedding output.

    Args:
        matrix: ``(L1 + 1, L2 + 1)`` CKA values.
        path: output PNG.
        title: figure title; row_name, column_name: axis labels (e.g. the models' names).
    """
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=float)
    rows, columns = matrix.shape
    figure, axis = plt.subplots(figsize=(max(4.5, 0.4 * columns + 2.5), max(4.0, 0.4 * rows + 2)))
    image = axis.imshow(matrix, vmin=0, vmax=1, cmap="magma", origin="lower")
    axis.set_xticks(range(columns), layer_labels(columns, True), fontsize=8)
    axis.set_yticks(range(rows), layer_labels(rows, True), fontsize=8)
    axis.set_xlabel(column_name)
    axis.set_ylabel(row_name)
    axis.set_title(title)
    if rows * columns <= 196:
        for row in range(rows):
            for column in range(columns):
                value = matrix[row, column]
                axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                          color="black" if value > 0.6 else "white")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="linear CKA")
    figure.tight_layout()
    return _save(figure, path)


def _pixel_map(patch_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """A patch-grid map repeated to the image's pixels (nearest, as in DINO's script)."""
    rows, columns = patch_map.shape
    return np.repeat(np.repeat(patch_map, height // rows, axis=0), width // columns, axis=1)


def _enlarge(image: np.ndarray) -> np.ndarray:
    factor = max(1, int(np.ceil(MINIMUM_DISPLAY_SIDE / min(image.shape[:2]))))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def attention_overlay(image: np.ndarray, patch_map: np.ndarray, opacity: float = 0.6) -> np.ndarray:
    """The image with a patch attention map blended on top (inferno colours, scaled to its max).

    Args:
        image: ``(H, W, 3)`` floats in [0, 1].
        patch_map: ``(h, w)`` non-negative attention on the patch grid.

    Returns:
        ``(H, W, 3)`` floats in [0, 1].
    """
    plt = _pyplot()
    heat = _pixel_map(np.asarray(patch_map, dtype=float), *image.shape[:2])
    heat = heat / max(heat.max(), 1e-12)
    coloured = plt.get_cmap("inferno")(heat)[..., :3]
    return (1 - opacity) * image + opacity * coloured


def mask_overlay(image: np.ndarray, patch_mask: np.ndarray) -> np.ndarray:
    """The image with kept patches tinted and the rest darkened (a DINO zero-shot mask).

    Args:
        image: ``(H, W, 3)`` floats in [0, 1].
        patch_mask: ``(h, w)`` bool on the patch grid.
    """
    mask = _pixel_map(np.asarray(patch_mask, dtype=bool), *image.shape[:2])[..., None]
    return np.where(mask, 0.5 * image + 0.5 * MASK_COLOUR, 0.35 * image)


def save_rgb(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a float ``(H, W, 3)`` image in [0, 1] as PNG, enlarged (nearest) when small."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.rint(_enlarge(image) * 255), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="RGB").save(path)
    return path


def save_attention_grid(
    images: np.ndarray,
    maps: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    mass: float = 0.6,
) -> Path:
    """One figure for a batch: per image a row of attention overlays and a row of masks, per head.

    Args:
        images: ``(B, H, W, 3)`` floats in [0, 1].
        maps: ``(B, heads, h, w)`` CLS attention; masks: ``(B, heads, h, w)`` bool.
        path: output PNG.
        titles: a name per image (default: its index).
        mass: the kept attention mass (for the row label).
    """
    plt = _pyplot()
    maps, masks = np.asarray(maps, dtype=float), np.asarray(masks, dtype=bool)
    batch, heads = maps.shape[:2]
    titles = list(titles) if titles is not None else [str(index) for index in range(batch)]
    columns = heads + 1
    figure, axes = plt.subplots(2 * batch, columns, figsize=(1.6 * columns, 1.6 * 2 * batch), squeeze=False)
    for index in range(batch):
        attention_row, mask_row = axes[2 * index], axes[2 * index + 1]
        attention_row[0].imshow(images[index], interpolation="nearest")
        attention_row[0].set_title(titles[index], fontsize=7)
        mask_row[0].imshow(attention_overlay(images[index], maps[index].mean(axis=0)), interpolation="nearest")
        mask_row[0].set_title("mean of heads", fontsize=7)
        for head in range(heads):
            attention_row[head + 1].imshow(attention_overlay(images[index], maps[index, head]), interpolation="nearest")
            attention_row[head + 1].set_title(f"head {head}", fontsize=7)
            mask_row[head + 1].imshow(mask_overlay(images[index], masks[index, head]), interpolation="nearest")
            mask_row[head + 1].set_title(f"{int(round(mass * 100))}% mask", fontsize=7)
        for axis in (*attention_row, *mask_row):
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("last-layer CLS attention (top) and masks keeping its mass (bottom)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)
