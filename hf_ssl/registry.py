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

    from hf_ssl.modeling.mae import MAEConfig, MAEForPreTraining
    from hf_ssl.modeling.simmim import SimMIMConfig, SwinForSimMIM, ViTForSimMIM

    families += [
        # One config type, two model classes: the Auto classes pick one by `config.architectures`
        # (SimMIMConfig fills it from `backbone`), the first of the tuple being the default.
        (SimMIMConfig, (SwinForSimMIM, ViTForSimMIM),
         (AutoModel, AutoModelForPreTraining, AutoModelForMaskedImageModeling)),
        (MAEConfig, MAEForPreTraining, (AutoModel, AutoModelForPreTraining)),
    ]
    return families


def register_auto_classes() -> None:
    """Register every family with AutoConfig and its Auto model classes (idempotent)."""
    for config_class, model_class, auto_classes in _model_families():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class in auto_classes:
            auto_class.register(config_class, model_class, exist_ok=True)
