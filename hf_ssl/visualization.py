"""Reconstruction figures for masked-image-modeling models (model card, end of a run).

One row per image, four columns: the input, what the encoder sees (hidden pixels grey), the
prediction pasted into the hidden region, and the target of the hidden region. Each model family
supplies an *adapter* that runs the model with a seeded mask and returns `ReconstructionPanels`
in the model's normalised pixel space; SimMIM and MAE adapters are built in. A method that
predicts tokens instead of pixels (SplitMask / BEiT) adds its own adapter, e.g. rendering the
vocabulary vector of each predicted token as the patch's pixels::

    from hf_ssl.visualization import ReconstructionPanels, register_reconstruction_adapter
    register_reconstruction_adapter(ViTForSplitMask, splitmask_panels)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

import torch.nn.functional as F

from hf_ssl.masking import beit_mask, random_split_mask
from hf_ssl.masking.simmim import upsample_patch_mask
from hf_ssl.modeling.mae import MAEForPreTraining
from hf_ssl.modeling.simmim import SwinForSimMIM, ViTForSimMIM
from hf_ssl.modeling.splitmask import ViTForSplitMask

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


Adapter = Callable[[PreTrainedModel, torch.Tensor, torch.Generator], ReconstructionPanels]
_ADAPTERS: list[tuple[type, Adapter]] = []


def register_reconstruction_adapter(model_class: type, adapter: Adapter) -> None:
    """Teach `save_reconstruction_figure` a model family.

    Args:
        model_class: instances of this class (and subclasses) use `adapter`; a later registration
            for the same class replaces the earlier one.
        adapter: ``(model, pixel_values (B, C, H, W), generator) -> ReconstructionPanels``; it must
            draw its mask from `generator` so figures are reproducible.
    """
    _ADAPTERS[:] = [(cls, fn) for cls, fn in _ADAPTERS if cls is not model_class]
    _ADAPTERS.append((model_class, adapter))


def simmim_panels(model, pixel_values: torch.Tensor, generator: torch.Generator) -> ReconstructionPanels:
    """SimMIM: the head predicts every pixel; the loss (and the figure) use the hidden ones."""
    batch_size, _, height, width = pixel_values.shape
    bool_masked_pos = model.mask_generator(batch_size, generator=generator)  # (B, N)
    outputs = model(pixel_values, bool_masked_pos=bool_masked_pos)
    hidden = upsample_patch_mask(outputs.bool_masked_pos.cpu(), model.config.grid_size, model.config.patch_size)
    return ReconstructionPanels(
        images=pixel_values,
        hidden=hidden.view(batch_size, height, width),
        prediction=outputs.reconstruction,
        target=pixel_values,
    )


def mae_panels(model, pixel_values: torch.Tensor, generator: torch.Generator) -> ReconstructionPanels:
    """MAE: per-patch predictions; with `norm_pix_loss` they are mapped back with each true patch's mean/std."""
    batch_size, _, height, width = pixel_values.shape
    patch_size = model.config.patch_size
    grid = (height // patch_size, width // patch_size)
    noise = torch.rand(batch_size, grid[0] * grid[1], generator=generator).to(pixel_values.device)
    outputs = model(pixel_values, noise=noise)
    predicted_patches = outputs.logits  # (B, N, p * p * C)
    if model.config.norm_pix_loss:
        target_patches = model.patchify(pixel_values)
        mean = target_patches.mean(dim=-1, keepdim=True)
        std = (target_patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        predicted_patches = predicted_patches * std + mean
    prediction = model.unpatchify(predicted_patches, original_image_size=(height, width))  # (B, C, H, W)
    hidden = upsample_patch_mask(outputs.mask.cpu().bool(), grid, patch_size)
    return ReconstructionPanels(
        images=pixel_values, hidden=hidden.view(batch_size, height, width), prediction=prediction, target=pixel_values
    )


def _patch_vectors_to_images(vectors: torch.Tensor, grid_size: tuple[int, int], channels: int, image_size: tuple[int, int]) -> torch.Tensor:
    """``(B, N, C * r * r)`` downsampled patch vectors -> ``(B, C, H, W)`` blocky images."""
    batch_size, _, dimension = vectors.shape
    resolution = int(round((dimension // channels) ** 0.5))
    rows, cols = grid_size
    small = vectors.view(batch_size, rows, cols, channels, resolution, resolution)
    small = small.permute(0, 3, 1, 4, 2, 5).reshape(batch_size, channels, rows * resolution, cols * resolution)
    return F.interpolate(small, size=image_size, mode="nearest")


def token_prediction_panels(model, pixel_values: torch.Tensor, generator: torch.Generator) -> ReconstructionPanels:
    """SplitMask / BEiT predict vocabulary tokens, not pixels: each hidden patch is drawn as the
    codebook vector of its predicted (resp. target) token, scaled to the true patch's norm (the
    codebook holds directions only) and upsampled from ``r x r`` to the patch size. For SplitMask
    the figure shows the first view (group A hidden)."""
    config = model.config
    batch_size, channels, height, width = pixel_values.shape
    grid, num_patches = config.grid_size, config.num_patches
    if config.objective == "splitmask":
        if num_patches % 2:
            raise ValueError("the token figure needs an even number of patches (both SplitMask views in one batch)")
        mask = random_split_mask(batch_size, num_patches, generator=generator)
    else:
        mask = beit_mask(config.mask_strategy, batch_size, grid, config.mask_ratio, generator=generator)
    outputs = model(pixel_values, bool_masked_pos=mask.to(pixel_values.device))
    hidden_indices = outputs.hidden_patch_indices[:batch_size]  # (B, M)
    vectors = model.tokenizer.vectors(pixel_values)  # (B, N, d)
    index = hidden_indices.unsqueeze(-1).expand(-1, -1, vectors.shape[-1])
    norms = vectors.gather(1, index).norm(dim=-1, keepdim=True)  # (B, M, 1)
    codebook = model.tokenizer.codebook.float()

    def render(tokens: torch.Tensor) -> torch.Tensor:
        drawn = vectors.scatter(1, index, codebook[tokens] * norms)
        return _patch_vectors_to_images(drawn, grid, channels, (height, width))

    hidden = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=hidden_indices.device)
    hidden.scatter_(1, hidden_indices, True)
    hidden = upsample_patch_mask(hidden.cpu(), grid, config.patch_size).view(batch_size, height, width)
    return ReconstructionPanels(
        images=pixel_values,
        hidden=hidden,
        prediction=render(outputs.logits[:batch_size].argmax(dim=-1)),
        target=render(outputs.target_token_ids[:batch_size]),
    )


register_reconstruction_adapter(ViTForSplitMask, token_prediction_panels)
register_reconstruction_adapter(ViTForSimMIM, simmim_panels)
register_reconstruction_adapter(SwinForSimMIM, simmim_panels)
register_reconstruction_adapter(MAEForPreTraining, mae_panels)


def find_adapter(model: PreTrainedModel) -> Adapter:
    """The adapter registered for `model`'s class (most recently registered match wins)."""
    for model_class, adapter in reversed(_ADAPTERS):
        if isinstance(model, model_class):
            return adapter
    known = ", ".join(cls.__name__ for cls, _ in _ADAPTERS)
    raise ValueError(
        f"No reconstruction adapter for {type(model).__name__}; known: {known}. "
        "Add one with hf_ssl.visualization.register_reconstruction_adapter."
    )


@torch.no_grad()
def reconstruction_panels(model: PreTrainedModel, pixel_values: torch.Tensor, seed: int = 0) -> ReconstructionPanels:
    """Run `model` in eval mode on `pixel_values` with a seeded mask; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        generator = torch.Generator().manual_seed(seed)
        panels = find_adapter(model)(model, pixel_values, generator)
    finally:
        model.train(was_training)
    return ReconstructionPanels(
        images=panels.images.detach().float().cpu(),
        hidden=panels.hidden.detach().bool().cpu(),
        prediction=panels.prediction.detach().float().cpu(),
        target=panels.target.detach().float().cpu(),
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
) -> str:
    """Save a PNG grid: input | encoder's view | prediction | target, one row per image.

    Args:
        model: a SimMIM / MAE / SplitMask / BEiT model (or any class with a registered adapter).
        pixel_values: ``(B, C, H, W)`` normalised images at the model's resolution.
        path: output PNG path (parent folders are created).
        image_mean, image_std: the normalisation of `pixel_values` (per channel), to show true colours.
        max_images: rows in the figure (the first images of the batch).
        seed: seed of the mask, so the same call draws the same figure.

    Returns:
        `path` as a string.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = reconstruction_panels(model, pixel_values[:max_images], seed=seed)
    hidden = panels.hidden.unsqueeze(-1)  # (B, H, W, 1)
    images = _to_display(panels.images, image_mean, image_std)
    prediction = _to_display(panels.prediction, image_mean, image_std)
    target = _to_display(panels.target, image_mean, image_std)
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
    "ReconstructionPanels",
    "find_adapter",
    "mae_panels",
    "reconstruction_panels",
    "register_reconstruction_adapter",
    "save_reconstruction_figure",
    "simmim_panels",
]
