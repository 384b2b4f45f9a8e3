"""Text side of image-text training: text-tower presets and resolution (``--text_model``), caption
tokenizers trained with `tokenizers`, and the image-caption row transform."""

from .models import CLIP_CONTEXT_LENGTH, TEXT_PRESETS, TextModelSpec, available_text_presets, resolve_text_model, text_preset_config
from .tokenizer import SPECIAL_TOKENS, TOKENIZER_KINDS, byte_level_tokenizer, caption_texts, train_caption_tokenizer
from .transform import ImageCaptionTransform, caption_image_pipeline

__all__ = [
    "CLIP_CONTEXT_LENGTH",
    "SPECIAL_TOKENS",
    "TEXT_PRESETS",
    "TOKENIZER_KINDS",
    "ImageCaptionTransform",
    "TextModelSpec",
    "available_text_presets",
    "byte_level_tokenizer",
    "caption_image_pipeline",
    "caption_texts",
    "resolve_text_model",
    "text_preset_config",
    "train_caption_tokenizer",
]
