"""What ``--text_model`` names: a text-tower preset (a small BERT built from a config) or a local
transformers text model folder / cached Hub id (config, weights and tokenizer).

Presets follow the compact BERTs of Turc et al. 2019 ("Well-Read Students Learn Better",
arXiv:1908.08962: tiny = 2 layers x 128, mini = 4 x 256, small = 4 x 512, medium = 8 x 512), plus
``text-micro`` for tests and the bundled run. A preset has no tokenizer: one is trained on the
run's captions (`hf_ssl.text.tokenizer`), and the vocabulary size comes from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, BertConfig, PreTrainedConfig

TEXT_PRESETS: dict[str, dict] = {
    "text-micro": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "bert-tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "bert-mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "bert-small": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048),
    "bert-medium": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2048),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
# CLIP's text context length; a preset's position table covers at least this many tokens so that
# prompts longer than the training captions (the zero-shot pipeline pads but does not truncate) fit.
CLIP_CONTEXT_LENGTH = 77


def available_text_presets() -> list[str]:
    return list(TEXT_PRESETS)


def text_preset_config(name: str, vocab_size: int, max_length: int, pad_token_id: int = 0) -> BertConfig:
    """The `BertConfig` of preset `name` for a tokenizer of `vocab_size` tokens and captions of `max_length`.

    Raises:
        ValueError: unknown preset (the message lists the known ones).
    """
    if name not in TEXT_PRESETS:
        raise ValueError(f"Unknown text preset {name!r}; known presets: {', '.join(TEXT_PRESETS)}")
    return BertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max(max_length, CLIP_CONTEXT_LENGTH),
        pad_token_id=pad_token_id,
        type_vocab_size=1,
        **TEXT_PRESETS[name],
    )


@dataclass(frozen=True)
class TextModelSpec:
    """A resolved ``--text_model``.

    Args:
        name: what the user gave.
        source: ``"preset"`` (config only, tokenizer trained on the captions) or ``"transformers"``
            (a folder or cached Hub id with a config, a tokenizer and usually weights).
        weights: where the text tower's safetensors weights are (None for presets: random init).
    """

    name: str
    source: str
    weights: str | None = None

    @property
    def is_preset(self) -> bool:
        return self.source == "preset"

    def config(self, vocab_size: int, max_length: int, pad_token_id: int = 0) -> PreTrainedConfig:
        """The text tower's config; a preset's is sized for the tokenizer, a checkpoint keeps its own."""
        if self.is_preset:
            return text_preset_config(self.name, vocab_size, max_length, pad_token_id)
        return AutoConfig.from_pretrained(self.name)


def resolve_text_model(name: str) -> TextModelSpec:
    """Resolve ``--text_model``: a preset (``text-micro``, ``bert-tiny`` ...) or a transformers text
    model folder / cached Hub id (offline: a local folder with config.json and tokenizer files).

    Raises:
        ValueError: neither a preset nor a readable transformers config.
    """
    if name in TEXT_PRESETS:
        return TextModelSpec(name=name, source="preset")
    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"--text_model {name!r} is not a text preset ({', '.join(TEXT_PRESETS)}) and no transformers config "
            f"could be read ({str(error).splitlines()[0]}). Offline, give a local folder with config.json, weights "
            "and tokenizer files."
        ) from error
    # The weights are read (safetensors only) when the model is built: a folder without them is an error then.
    return TextModelSpec(name=name, source="transformers", weights=name)


__all__ = [
    "CLIP_CONTEXT_LENGTH",
    "TEXT_PRESETS",
    "TextModelSpec",
    "available_text_presets",
    "resolve_text_model",
    "text_preset_config",
]
