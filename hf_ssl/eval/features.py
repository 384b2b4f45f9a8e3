"""Frozen-encoder features for the evaluation protocols (kNN, linear probe).

The encoder is any model whose output carries ``last_hidden_state`` (B, T, D): a HF `ViTModel`,
`SwinModel`, or an hf-ssl pre-training model (its `get_backbone()` is used). Features are
computed in eval mode without gradients and returned as one float32 CPU tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

Pooling = Literal["mean", "cls"]
POOLINGS = ("mean", "cls")


def _encoder_of(model: nn.Module) -> nn.Module:
    """The plain encoder inside `model`: hf-ssl pre-training models expose it via `get_backbone()`."""
    get_backbone = getattr(model, "get_backbone", None)
    if callable(get_backbone):
        return get_backbone()
    return model


def count_prefix_tokens(config, sequence_length: int, height: int, width: int) -> int:
    """Number of non-patch tokens (CLS, distillation, registers) at the start of the sequence.

    Hierarchical encoders (Swin: a config with ``depths``) have none. Plain ViTs have
    ``sequence_length - (height // patch_size) * (width // patch_size)`` of them (1 for ViT).
    """
    if config is None or hasattr(config, "depths") or not hasattr(config, "patch_size"):
        return 0
    patch_size = config.patch_size
    if isinstance(patch_size, (tuple, list)):
        patch_height, patch_width = patch_size
    else:
        patch_height = patch_width = int(patch_size)
    num_patches = (height // patch_height) * (width // patch_width)
    return max(sequence_length - num_patches, 0)


def pool_hidden_states(
    last_hidden_state: torch.Tensor, num_prefix_tokens: int, pooling: Pooling = "mean"
) -> torch.Tensor:
    """Pool a token sequence (B, T, D) into one vector per image (B, D).

    Args:
        last_hidden_state: encoder output, (B, T, D); the first `num_prefix_tokens` are CLS-like.
        num_prefix_tokens: tokens to leave out of the mean (1 for ViT, 0 for Swin).
        pooling: ``"mean"`` averages the patch tokens; ``"cls"`` takes the first token.
    """
    if pooling == "mean":
        return last_hidden_state[:, num_prefix_tokens:].mean(dim=1)  # (B, D)
    if pooling == "cls":
        if num_prefix_tokens == 0:
            raise ValueError("pooling='cls' needs an encoder with a CLS token; this one has none, use pooling='mean'")
        return last_hidden_state[:, 0]  # (B, D)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def encode_and_pool(encoder: nn.Module, pixel_values: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
    """``(B, C, H, W) -> (B, D)``: pooled token sequence, or the model's own pooling for encoders
    whose output is a feature map (ConvNeXt, ResNet, timm CNNs through `TimmWrapperModel`); a
    timm module (``num_classes=0``) returns pooled features itself."""
    if type(encoder).__module__.startswith("timm."):
        return encoder(pixel_values)
    outputs = encoder(pixel_values=pixel_values)
    hidden = outputs.last_hidden_state
    if hidden.ndim != 3:  # (B, C, h, w) feature map: no tokens to pool
        return outputs.pooler_output.flatten(1)
    prefix = count_prefix_tokens(getattr(encoder, "config", None), hidden.shape[1], *pixel_values.shape[-2:])
    return pool_hidden_states(hidden, prefix, pooling)


def _batches(pixel_values: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(pixel_values, torch.Tensor):
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (N, C, H, W), got shape {tuple(pixel_values.shape)}")
        yield from pixel_values.split(batch_size)
        return
    for batch in pixel_values:
        if isinstance(batch, dict):
            batch = batch["pixel_values"]
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        yield batch


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    pixel_values: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 64,
    pooling: Pooling = "mean",
) -> torch.Tensor:
    """Encode images with a frozen encoder and pool each into one feature vector.

    Args:
        backbone: a model returning ``last_hidden_state`` (B, T, D) (ViTModel, SwinModel, ...) or an
            hf-ssl pre-training model (its `get_backbone()` is used).
        pixel_values: a tensor (N, C, H, W), split into chunks of `batch_size`, or an iterable of
            tensors (B, C, H, W) / (C, H, W) or of dicts with a ``"pixel_values"`` entry.
        batch_size: chunk size when `pixel_values` is a tensor.
        pooling: ``"mean"`` = mean of the patch tokens (a ViT's CLS token left out), ``"cls"`` =
            the first token (ViT only).

    Returns:
        (N, D) float32 CPU tensor.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return _encode_frozen(backbone, pixel_values, batch_size, lambda encoder, batch: encode_and_pool(encoder, batch, pooling))


@torch.no_grad()
def extract_feature_maps(backbone: nn.Module, pixel_values: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``(N, C, H, W) -> (N, h, w, D)`` float32 CPU: a frozen encoder's last feature map, channels last
    (`hf_ssl.backbones.modules.spatial_features`: ViT patch tokens on their grid, conv / Swin last stages)."""
    from hf_ssl.backbones.modules import spatial_features

    return _encode_frozen(backbone, pixel_values, batch_size, spatial_features)


def _encode_frozen(backbone: nn.Module, pixel_values, batch_size: int, encode) -> torch.Tensor:
    """``encode(encoder, batch)`` over every batch in eval mode (restored after), on the encoder's
    device and dtype; the outputs as one float32 CPU tensor."""
    encoder = _encoder_of(backbone)
    was_training = encoder.training
    encoder.eval()
    parameter = next(encoder.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    outputs = []
    try:
        for batch in _batches(pixel_values, batch_size):
            outputs.append(encode(encoder, batch.to(device=device, dtype=dtype)).float().cpu())  # batch: (B, C, H, W)
    finally:
        encoder.train(was_training)
    if not outputs:
        raise ValueError("pixel_values is empty: no images to encode")
    return torch.cat(outputs)


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a model's parameters and buffers, names included."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_encoder_of(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_features(
    backbone: nn.Module,
    pixel_values: torch.Tensor | Iterable[torch.Tensor],
    cache_file: str | Path | None,
    data_key: str,
    batch_size: int = 64,
    pooling: Pooling = "mean",
) -> torch.Tensor:
    """`extract_features`, stored in a safetensors file and reused while weights and data match.

    Args:
        cache_file: where to keep the features; None disables caching.
        data_key: a string that identifies the images (dataset name, split, revision, size,
            preprocessing); with the weights' fingerprint and `pooling` it decides whether the
            stored features are still valid.

    Returns:
        (N, D) float32 CPU tensor.
    """
    if cache_file is None:
        return extract_features(backbone, pixel_values, batch_size, pooling)
    cache_file = Path(cache_file)
    key = f"{weights_fingerprint(backbone)}|{pooling}|{data_key}"
    if cache_file.is_file():
        with safe_open(str(cache_file), framework="pt") as stored:
            if (stored.metadata() or {}).get("key") == key:
                return stored.get_tensor("features")
    features = extract_features(backbone, pixel_values, batch_size, pooling)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": features.contiguous()}, str(cache_file), metadata={"key": key})
    return features
