"""Reconstruction figures for masked-image-modeling models (model card, end of a run).

One row per image, four columns: the input, what the encoder sees (hidden pixels grey), the
prediction pasted into the hidden region, and the target of the hidden region. A method supplies
a *panels* function, ``(model, pixel_values, generator) -> ReconstructionPanels``, which runs its
model with a mask drawn from `generator` and returns the four images in the model's normalised
pixel space; its recipe declares it (`Recipe.reconstruction_panels`), so this module knows no
method. A method that predicts tokens instead of pixels draws e.g. each predicted token's
vocabulary vector as the patch's pixels (SplitMask / BEiT).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

HIDDEN_GREY = 0.5


@dataclass
class ReconstructionPanels:
    """What a figure shows, in the model's normalised pixel space.

    Args:
        images: ``(B, C, H, W)`` the input.
        hidden: ``(B, H, W)`` bool, True where the model had to predict.
        prediction: ``(B, C, H, W)`` model output (only hidden pixels are shown).
        target: ``(B, C, H, W)`` what the loss compares against at hidden pixels.
    """

    images: torch.Tensor
    hidden: torch.Tensor
    prediction: torch.Tensor
    target: torch.Tensor


PanelsFunction = Callable[[PreTrainedModel, torch.Tensor, torch.Generator], "ReconstructionPanels"]


_PANELS: dict[type, PanelsFunction] = {}


def register_reconstruction_panels(model_class: type, panels: PanelsFunction) -> None:
    """Draw `model_class` (and its subclasses) with `panels` (`hf_ssl.recipes.register_recipe` calls it)."""
    _PANELS[model_class] = panels


def panels_for(model: PreTrainedModel) -> PanelsFunction:
    """The panels function registered for `model`'s class or the nearest parent class."""
    for model_class in type(model).__mro__:
        if model_class in _PANELS:
            return _PANELS[model_class]
    raise ValueError(f"{type(model).__name__} has no reconstruction figure (its method predicts no image content)")


@torch.no_grad()
def reconstruction_panels(
    model: PreTrainedModel, pixel_values: torch.Tensor, seed: int = 0, panels: PanelsFunction | None = None
) -> ReconstructionPanels:
    """Run `model` in eval mode on `pixel_values` with a seeded mask; the model's mode is restored.

    Args:
        panels: the method's panels function (default: the one its recipe declares).
    """
    panels = panels or panels_for(model)
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        generator = torch.Generator().manual_seed(seed)
        drawn = panels(model, pixel_values, generator)
    finally:
        model.train(was_training)
    return ReconstructionPanels(
        images=drawn.images.detach().float().cpu(),
        hidden=drawn.hidden.detach().bool().cpu(),
        prediction=drawn.prediction.detach().float().cpu(),
        target=drawn.target.detach().float().cpu(),
    )


def _to_display(images: torch.Tensor, image_mean: Sequence[float], image_std: Sequence[float]) -> torch.Tensor:
    """``(B, C, H, W)`` normalised -> ``(B, H, W, C)`` in [0, 1] (grey-scale inputs become RGB)."""
    mean = torch.tensor(image_mean, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(image_std, dtype=images.dtype).view(1, -1, 1, 1)
    images = (images * std + mean).clamp(0.0, 1.0)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1)


def save_reconstruction_figure(
    model: PreTrainedModel,
    pixel_values: torch.Tensor,
    path: str | os.PathLike,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    max_images: int = 4,
    seed: int = 0,
    panels: PanelsFunction | None = None,
) -> str:
    """Save a PNG grid: input | encoder's view | prediction | target, one row per image.

    Args:
        model: a masked-image-modeling model (SimMIM, MAE, SplitMask, BEiT, ...).
        pixel_values: ``(B, C, H, W)`` normalised images at the model's resolution.
        path: output PNG path (parent folders are created).
        image_mean, image_std: the normalisation of `pixel_values` (per channel), to show true colours.
        max_images: rows in the figure (the first images of the batch).
        seed: seed of the mask, so the same call draws the same figure.
        panels: the method's panels function (default: the one its recipe declares).

    Returns:
        `path` as a string.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = reconstruction_panels(model, pixel_values[:max_images], seed=seed, panels=panels)
    hidden = drawn.hidden.unsqueeze(-1)  # (B, H, W, 1)
    images = _to_display(drawn.images, image_mean, image_std)
    prediction = _to_display(drawn.prediction, image_mean, image_std)
    target = _to_display(drawn.target, image_mean, image_std)
    columns = {
        "input": images,
        "encoder sees": torch.where(hidden, torch.full_like(images, HIDDEN_GREY), images),
        "prediction": torch.where(hidden, prediction, images),
        "target (hidden)": torch.where(hidden, target, torch.full_like(target, HIDDEN_GREY)),
    }
    rows = images.shape[0]
    figure, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows), squeeze=False)
    for column, (title, tiles) in enumerate(columns.items()):
        for row in range(rows):
            axis = axes[row][column]
            axis.imshow(tiles[row].numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=9)
    figure.suptitle(f"{type(model).__name__} reconstructions", fontsize=10)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return str(path)


__all__ = [
    "PanelsFunction",
    "ReconstructionPanels",
    "panels_for",
    "register_reconstruction_panels",
    "reconstruction_panels",
    "save_reconstruction_figure",
]
