"""Caption tokenizers trained with the `tokenizers` library, wrapped for transformers.

A text-tower preset has no vocabulary of its own, so the dual encoder trains one on the run's
captions before anything is built: byte-level BPE by default (GPT-2's scheme, as CLIP's text
tokenizer: every string is encodable, so label names never seen in a caption still get sub-word
tokens at zero-shot time) or a word-level vocabulary (whole words, unseen words -> ``[UNK]``).
The result is a `PreTrainedTokenizerFast` with BERT's special tokens (``[CLS] text [SEP]``, the
text tower pools the ``[CLS]`` position), so ``save_pretrained`` / `AutoTokenizer` and the
zero-shot pipeline handle it like any transformers tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .models import CLIP_CONTEXT_LENGTH

TokenizerKind = Literal["bpe", "wordlevel"]
TOKENIZER_KINDS: tuple[str, ...] = ("bpe", "wordlevel")
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)


def caption_texts(cell) -> list[str]:
    """The non-empty captions of one dataset cell: a string, UTF-8 bytes (webdataset ``txt``), or a
    list of them (several captions per image); anything else holds no caption."""
    if isinstance(cell, (bytes, bytearray)):
        cell = bytes(cell).decode("utf-8", errors="replace")
    if isinstance(cell, str):
        text = cell.strip()
        return [text] if text else []
    if isinstance(cell, (list, tuple)):
        return [text for item in cell for text in caption_texts(item)]
    return []


def _backend(kind: TokenizerKind) -> tuple[Tokenizer, object]:
    """An untrained `tokenizers.Tokenizer` of `kind` and the trainer class that fits it."""
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        return tokenizer, trainers.BpeTrainer
    if kind == "wordlevel":
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        return tokenizer, trainers.WordLevelTrainer
    raise ValueError(f"tokenizer kind must be one of {TOKENIZER_KINDS}, got {kind!r}")


def train_caption_tokenizer(
    captions: Iterable[str],
    kind: TokenizerKind = "bpe",
    vocab_size: int = 8192,
    model_max_length: int = CLIP_CONTEXT_LENGTH,
) -> PreTrainedTokenizerFast:
    """Fit a tokenizer on `captions` (lower-cased, NFKC-normalised), deterministic for a given input.

    Args:
        captions: caption strings (an iterator is read once).
        kind: ``"bpe"`` (byte-level BPE; with no captions: the 256 byte tokens alone) or ``"wordlevel"``.
        vocab_size: largest vocabulary, special tokens included (a small corpus gives fewer).
        model_max_length: longest sequence the text tower accepts (its position table).

    Returns:
        A `PreTrainedTokenizerFast` whose encodings are ``[CLS] caption [SEP]``.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)} (the special tokens), got {vocab_size}")
    backend, trainer_class = _backend(kind)
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    trainer_options = dict(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    if kind == "bpe":
        trainer_options["initial_alphabet"] = pre_tokenizers.ByteLevel.alphabet()
    backend.train_from_iterator(iter(captions), trainer_class(**trainer_options))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B {SEP}",
        special_tokens=[(CLS, backend.token_to_id(CLS)), (SEP, backend.token_to_id(SEP))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def byte_level_tokenizer(model_max_length: int = CLIP_CONTEXT_LENGTH) -> PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer trained on nothing (261 tokens: 256 bytes + specials): what a
    text preset uses when no caption was read before the model is built (tests, Python API)."""
    return train_caption_tokenizer((), kind="bpe", model_max_length=model_max_length)


__all__ = [
    "SPECIAL_TOKENS",
    "TOKENIZER_KINDS",
    "TokenizerKind",
    "byte_level_tokenizer",
    "caption_texts",
    "train_caption_tokenizer",
]
