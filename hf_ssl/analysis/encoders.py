"""A ViT encoder ready for analysis: loaded from any checkpoint folder, eager attention, inputs.

`load_vit_encoder` accepts a plain transformers ViT folder, an hf-ssl run folder (its exported
``backbone/`` or its model's `get_backbone()`, through `hf_ssl.backbones.loading.load_backbone`) or a
backbone folder. Attention probabilities only come back from the eager attention path: with
transformers 5.x's default sdpa, ``output_attentions=True`` returns an empty tuple.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from hf_ssl.data.images import UndecodableImageError, decode_image

# Plain ViTs whose token sequence is [prefix tokens] + patches in row-major order. ViTMAE is
# left out on purpose: its encoder shuffles and drops patches (export the backbone instead). BEiT's
# ViT (what SplitMask, BEiT and SimMIM export at 224 px) has the same layout; its relative position
# bias is inside the attention probabilities returned.
SUPPORTED_MODEL_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers", "beit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AnalysisInputError(ValueError):
    """A model, image or option the analysis cannot use (missing, unreadable, not a ViT)."""


@dataclass(frozen=True)
class PatchGrid:
    """How a ViT's tokens map onto the image.

    Args:
        grid_height, grid_width: patches per column / row (row-major token order).
        patch_size: pixels per patch side.
        num_prefix_tokens: tokens before the patches (CLS, distillation, registers).
    """

    grid_height: int
    grid_width: int
    patch_size: int
    num_prefix_tokens: int

    @property
    def num_patches(self) -> int:
        return self.grid_height * self.grid_width


@dataclass
class EncoderOutputs:
    """Attentions and hidden states of one forward pass.

    Args:
        attentions: L tensors ``(B, H, T, T)``, one per layer.
        hidden_states: L + 1 tensors ``(B, T, D)``: the embeddings, then each layer's output.
        grid: the patch grid of these inputs.
    """

    attentions: tuple[torch.Tensor, ...]
    hidden_states: tuple[torch.Tensor, ...]
    grid: PatchGrid


def _patch_size_of(config) -> int:
    patch_size = config.patch_size
    if isinstance(patch_size, (tuple, list)):
        if len(set(patch_size)) != 1:
            raise AnalysisInputError(f"only square patches are supported, got patch_size={patch_size}")
        patch_size = patch_size[0]
    return int(patch_size)


def check_vit(model: nn.Module, source: str = "the model") -> None:
    """Raise `AnalysisInputError` unless `model` is a plain ViT encoder (see SUPPORTED_MODEL_TYPES)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise AnalysisInputError(
            f"{source} is not a ViT encoder (model_type={model_type!r}); supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def prepare_vit(model: nn.Module, source: str = "the model") -> nn.Module:
    """Check that `model` is a plain ViT, switch it to eager attention and eval mode."""
    check_vit(model, source)
    model.set_attn_implementation("eager")
    return model.eval()


def load_vit_encoder(path_or_repo_id: str | os.PathLike) -> nn.Module:
    """The plain ViT encoder of a checkpoint, eager attention, eval mode.

    Args:
        path_or_repo_id: a transformers ViT folder, an hf-ssl run folder, a ``backbone/`` folder
            or a Hub repo id (cached, with HF_HUB_OFFLINE=1).

    Raises:
        AnalysisInputError: missing or unloadable checkpoint, or not a ViT.
    """
    from hf_ssl.backbones.loading import load_backbone

    source = str(path_or_repo_id)
    local = Path(source)
    looks_local = local.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1 or local.exists()
    if looks_local and not local.is_dir():
        raise AnalysisInputError(f"model folder not found: {source}")
    if local.is_dir() and not (local / "config.json").is_file() and not (local / "backbone" / "config.json").is_file():
        raise AnalysisInputError(f"{source} has no config.json (not a transformers checkpoint folder)")
    try:
        model = load_backbone(path_or_repo_id)
    # A load can fail in transformers, safetensors, huggingface_hub or its HTTP client; each is
    # reported as one input error, the original exception chained.
    except Exception as error:  # noqa: BLE001
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AnalysisInputError(f"cannot load {source}: {message}") from error
    return prepare_vit(model, source)


def load_image_processor(path: str | os.PathLike):
    """The checkpoint's `AutoImageProcessor` (from the folder or its ``backbone/``), or None."""
    from transformers import AutoImageProcessor

    local = Path(path)
    for candidate in (local, local / "backbone"):
        if candidate.is_dir() and (candidate / "preprocessor_config.json").is_file():
            return AutoImageProcessor.from_pretrained(str(candidate))
    return None


def load_images(paths: Sequence[str | os.PathLike]) -> list[Image.Image]:
    """Open image files as RGB PIL images, decoded as training decodes them (`hf_ssl.data.decode_image`).

    Raises:
        AnalysisInputError: a file is missing or not an image PIL can read.
    """
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise AnalysisInputError(f"image not found: {path}")
        try:
            images.append(decode_image(str(path)))
        except UndecodableImageError as error:
            raise AnalysisInputError(f"cannot read image {path}: {error}") from error
    return images


def bundled_images(count: int, variant: str = "digits") -> list[Image.Image]:
    """The first `count` images of the bundled test split (`hf_ssl.data.load_default_dataset`)."""
    from hf_ssl.data.default import load_default_dataset

    if count < 1:
        raise AnalysisInputError(f"the number of images must be >= 1, got {count}")
    dataset = load_default_dataset("test", variant=variant)
    return [decode_image(image) for image in dataset.select(range(min(count, len(dataset))))["image"]]


def bundled_masks(count: int, size: tuple[int, int], variant: str = "scenes") -> torch.Tensor:
    """``(count, H, W)`` bool foreground (mask > 0) of the first `count` bundled test images, resized
    (nearest) to `size`; only the scenes have masks."""
    from hf_ssl.data.default import load_default_dataset

    dataset = load_default_dataset("test", variant=variant, with_masks=True)
    if "mask" not in dataset.column_names:
        raise AnalysisInputError(f"the bundled {variant!r} images have no masks: use --bundled_variant scenes")
    return load_masks(dataset.select(range(min(count, len(dataset))))["mask"], size)


def load_masks(masks: Sequence, size: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` bool foreground (value > 0, 255 = unlabelled counts as background) of mask
    images or files, resized (nearest) to `size` ``(H, W)``."""
    loaded = []
    for mask in masks:
        try:
            image = mask if isinstance(mask, Image.Image) else Image.open(mask)
            image.load()
        except (OSError, ValueError) as error:
            raise AnalysisInputError(f"cannot read mask {mask}: {error}") from error
        if image.mode not in ("1", "L", "P", "I", "I;16"):
            raise AnalysisInputError(f"mask {mask} must be a single-channel class-index image, got mode {image.mode}")
        values = np.asarray(image.resize((size[1], size[0]), Image.Resampling.NEAREST)).astype(np.int64)
        loaded.append(torch.from_numpy((values > 0) & (values != 255)))
    return torch.stack(loaded)


def preprocess_images(images: Sequence[Image.Image], model: nn.Module, image_processor=None) -> torch.Tensor:
    """Pixel values for `model`: the checkpoint's image processor, else resize + ImageNet normalisation.

    Args:
        images: RGB PIL images.
        model: the encoder (its ``config.image_size`` sets the fallback size).
        image_processor: a transformers image processor, or None for the fallback.

    Returns:
        ``(B, 3, H, W)`` float32.
    """
    if image_processor is not None:
        return image_processor(images=list(images), return_tensors="pt")["pixel_values"].float()
    image_size = model.config.image_size
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    tensors = []
    for image in images:
        resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        pixels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(height, width, 3)
        tensors.append((pixels.permute(2, 0, 1).float() / 255.0 - mean) / std)
    return torch.stack(tensors)


def displayable_images(pixel_values: torch.Tensor, image_processor=None) -> torch.Tensor:
    """Undo the normalisation of `pixel_values` for display: ``(B, H, W, 3)`` in [0, 1].

    Uses the processor's ``image_mean`` / ``image_std`` (ImageNet's without a processor); a
    processor without them is shown min-max scaled per image.
    """
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if image_processor is not None:
        if getattr(image_processor, "do_normalize", True) and getattr(image_processor, "image_mean", None) is not None:
            mean, std = image_processor.image_mean, image_processor.image_std
        else:
            low = pixel_values.amin(dim=(1, 2, 3), keepdim=True)
            high = pixel_values.amax(dim=(1, 2, 3), keepdim=True)
            return ((pixel_values - low) / (high - low).clamp_min(1e-12)).permute(0, 2, 3, 1)
    mean = torch.as_tensor(mean, dtype=pixel_values.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=pixel_values.dtype).view(1, -1, 1, 1)
    return (pixel_values * std + mean).clamp(0, 1).permute(0, 2, 3, 1)


@torch.no_grad()
def encode(model: nn.Module, pixel_values: torch.Tensor) -> EncoderOutputs:
    """One forward pass returning every layer's attention probabilities and hidden states.

    Args:
        model: a plain ViT encoder with eager attention (see `prepare_vit`).
        pixel_values: ``(B, 3, H, W)``; H and W multiples of the patch size. Sizes other than the
            checkpoint's use the encoder's position-embedding interpolation.
    """
    patch_size = _patch_size_of(model.config)
    height, width = pixel_values.shape[-2:]
    if height % patch_size or width % patch_size:
        raise AnalysisInputError(f"image size {height}x{width} is not a multiple of the patch size {patch_size}")
    keyword_arguments = {"output_attentions": True, "output_hidden_states": True}
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        keyword_arguments["interpolate_pos_encoding"] = True
    parameter = next(model.parameters())
    outputs = model(pixel_values.to(device=parameter.device, dtype=parameter.dtype), **keyword_arguments)
    if not outputs.attentions:
        raise AnalysisInputError(
            f"the encoder returned no attentions (attention implementation {model.config._attn_implementation!r}); "
            "call prepare_vit(model) to switch it to eager attention"
        )
    grid_height, grid_width = height // patch_size, width // patch_size
    tokens = outputs.attentions[0].shape[-1]
    grid = PatchGrid(grid_height, grid_width, patch_size, tokens - grid_height * grid_width)
    if grid.num_prefix_tokens < 0:
        raise AnalysisInputError(f"the encoder has {tokens} tokens for a {grid_height}x{grid_width} patch grid")
    return EncoderOutputs(
        attentions=tuple(attention.float().cpu() for attention in outputs.attentions),
        hidden_states=tuple(hidden.float().cpu() for hidden in outputs.hidden_states),
        grid=grid,
    )
