"""Registration of every hf-ssl config and model with the transformers Auto classes.

`import hf_ssl` calls `register_auto_classes()`, after which `AutoConfig`, `AutoModel`,
`AutoModelForPreTraining` (and, for pixel-reconstruction methods,
`AutoModelForMaskedImageModeling`) resolve hf-ssl checkpoints by their `model_type`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForMaskedImageModeling, AutoModelForPreTraining


def _model_families():
    """``(config_class, model_class, auto_classes)`` for every hf-ssl model family."""
    from hf_ssl.modeling.splitmask import BEiTConfig, SplitMaskConfig, ViTForBEiT, ViTForSplitMask

    families = [
        (SplitMaskConfig, ViTForSplitMask, (AutoModel, AutoModelForPreTraining)),
        (BEiTConfig, ViTForBEiT, (AutoModel, AutoModelForPreTraining, AutoModelForMaskedImageModeling)),
    ]
    return families


def register_auto_classes() -> None:
    """Register every family with AutoConfig and its Auto model classes (idempotent)."""
    for config_class, model_class, auto_classes in _model_families():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class in auto_classes:
            auto_class.register(config_class, model_class, exist_ok=True)
