"""The dual encoder's per-row transform: one augmented image and one tokenised caption per row.

Runs in the DataLoader workers (picklable). The image gets open_clip's training augmentation, a
RandomResizedCrop with scale (0.9, 1) and nothing else (no flip: a caption may say "left", and
digits are not mirror-symmetric). A caption cell may hold several captions (a list, COCO-style):
one is drawn per sample from the torch generator the stream seeds per sample, so the choice is
reproducible and resumable. Captions are padded / truncated to a fixed length so the collate
stacks them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from hf_ssl.data.images import UndecodableImageError, decode_image

from .tokenizer import caption_texts

# open_clip's default training crop scale (AugmentationCfg.scale): almost the whole image.
CROP_SCALE = (0.9, 1.0)


def caption_image_pipeline(
    image_size: int, image_mean: Sequence[float], image_std: Sequence[float], crop_scale=CROP_SCALE
) -> v2.Compose:
    """``PIL.Image -> (3, H, W)`` normalised tensor: RandomResizedCrop(`crop_scale`, bicubic) only."""
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(image_mean), list(image_std)),
    ])


class ImageCaptionTransform:
    """``{"image": cell, "caption": cell} -> {"pixel_values", "input_ids", "attention_mask"}``.

    Args:
        tokenizer: the run's tokenizer (a transformers tokenizer; pickled into each worker).
        max_length: L, the fixed caption length in tokens (specials included).
        image_size, image_mean, image_std: the image side and normalisation.

    Returns (per row): ``pixel_values`` (3, H, W), ``input_ids`` (L,) and ``attention_mask`` (L,).

    Raises:
        hf_ssl.data.UndecodableImageError: unreadable image, or a caption cell without any non-empty
            text; the stream skips the row and counts it in ``skipped_samples``.
    """

    def __init__(self, tokenizer, max_length: int, image_size: int, image_mean: Sequence[float], image_std: Sequence[float]):
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 ([CLS] + one token + [SEP]), got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_pipeline = caption_image_pipeline(image_size, image_mean, image_std)

    def __call__(self, row: dict) -> dict[str, torch.Tensor]:
        captions = caption_texts(row["caption"])
        if not captions:
            raise UndecodableImageError(f"the caption cell holds no text ({type(row['caption']).__name__}: {row['caption']!r:.60})")
        caption = captions[int(torch.randint(len(captions), ()))]
        pixel_values = self.image_pipeline(decode_image(row["image"]))
        encoded = self.tokenizer(caption, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        return {
            "pixel_values": pixel_values,
            "input_ids": encoded["input_ids"][0],
            "attention_mask": encoded["attention_mask"][0],
        }


__all__ = ["CROP_SCALE", "ImageCaptionTransform", "caption_image_pipeline"]
