"""Baselines without any learned representation: raw-pixel kNN.

A pre-trained encoder is only interesting where it beats its input. The raw-pixel baseline runs
the same kNN protocol as `hf_ssl.eval.knn.knn_classify` (DINO, Caron et al. 2021,
arXiv:2104.14294: cosine similarity, k=20 neighbours, votes weighted by exp(s / 0.07)) on the
flattened pixels, after subtracting the mean training image (without centring, every pair of
mostly-black images is close in cosine and the nearest neighbours are those with most ink).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from hf_ssl.data.images import decode_image

from .knn import knn_classify

Images = Sequence[Image.Image] | np.ndarray | torch.Tensor


def pixel_matrix(images: Images) -> torch.Tensor:
    """Flatten images of one size into rows of float32 pixels in [0, 1].

    Args:
        images: PIL images (decoded by `hf_ssl.data.decode_image`, as training decodes them), a
            uint8 array ``(N, H, W)`` or ``(N, H, W, C)``, or a float tensor ``(N, C, H, W)`` /
            ``(N, H, W)`` used as is.

    Returns:
        ``(N, D)`` float32 with D the number of values per image.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim < 2:
            raise ValueError(f"images must have a batch dimension and pixels, got shape {tuple(images.shape)}")
        return images.float().reshape(images.shape[0], -1)
    if isinstance(images, np.ndarray):
        array = images
    else:
        if len(images) == 0:
            raise ValueError("images is empty")
        images = [decode_image(image) for image in images]  # as training decodes them
        sizes = {image.size for image in images}
        if len(sizes) != 1:
            raise ValueError(f"images must all have one size, got {sorted(sizes)}")
        array = np.stack([np.asarray(image) for image in images])  # (N, H, W, 3)
    if array.ndim < 2:
        raise ValueError(f"images must have a batch dimension and pixels, got shape {array.shape}")
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return torch.from_numpy(array.reshape(array.shape[0], -1).astype(np.float32) / scale)


def centred_pixel_features(train_images: Images, test_images: Images) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened pixels minus the mean training image: the raw-pixel "features" ``(N, D)``, ``(M, D)``.

    Centring matters for cosine protocols: without it, every pair of mostly-black images is close
    and the nearest neighbours are those with the most ink.
    """
    train_pixels = pixel_matrix(train_images)  # (N, D)
    test_pixels = pixel_matrix(test_images)  # (M, D)
    if train_pixels.shape[1] != test_pixels.shape[1]:
        raise ValueError(
            f"train and test images must have the same size, got {train_pixels.shape[1]} and {test_pixels.shape[1]} values"
        )
    mean_image = train_pixels.mean(dim=0, keepdim=True)  # (1, D)
    return train_pixels - mean_image, test_pixels - mean_image


def raw_pixel_knn(
    train_images: Images,
    train_labels: Sequence[int] | torch.Tensor,
    test_images: Images,
    test_labels: Sequence[int] | torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """kNN accuracy of centred, flattened pixels (the DINO kNN protocol on raw input).

    Args:
        train_images, test_images: N and M images of one size (see `pixel_matrix`).
        train_labels: (N,) integer labels; test_labels: (M,).
        k, temperature: neighbours and vote temperature (DINO: 20 and 0.07).

    Returns:
        ``{"accuracy": float, "top5_accuracy": float}`` as `knn_classify`.
    """
    train_features, test_features = centred_pixel_features(train_images, test_images)
    return knn_classify(
        train_features,
        torch.as_tensor(train_labels, dtype=torch.long),
        test_features,
        torch.as_tensor(test_labels, dtype=torch.long),
        k=k,
        temperature=temperature,
    )


def bundled_raw_pixel_knn(
    variant: str = "digits", image_size: int | None = None, k: int = 20, temperature: float = 0.07
) -> dict[str, float]:
    """`raw_pixel_knn` on the bundled data's fixed train/test split.

    Args:
        variant: "digits" or "scenes" (see `hf_ssl.data.default`).
        image_size: image side; the variant's own default when None (32 / 48).
        k, temperature: as in `raw_pixel_knn`.
    """
    from hf_ssl.data.default import load_default_dataset

    train = load_default_dataset("train", image_size=image_size, variant=variant)
    test = load_default_dataset("test", image_size=image_size, variant=variant)
    return raw_pixel_knn(train["image"], train["label"], test["image"], test["label"], k=k, temperature=temperature)
