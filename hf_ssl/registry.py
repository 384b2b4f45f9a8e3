"""Registration of hf-ssl configs and models with the transformers Auto classes.

Each recipe declares its ``(config_class, model_class, auto_class_names)`` registrations and
`hf_ssl.recipes.register_recipe` registers them, so ``import hf_ssl`` makes `AutoConfig`,
`AutoModel`, `AutoModelForPreTraining`, ... resolve every hf-ssl ``model_type``. Checkpoints saved
by earlier releases under other model types load through `LEGACY_MODEL_TYPES`.
"""

from __future__ import annotations

import transformers
from transformers import AutoConfig


def register_models(registrations) -> None:
    """Register ``(config_class, model_class, ("AutoModel", ...))`` triples (idempotent).

    One config class may map to several model classes (SimMIM: Swin and ViT); the Auto classes
    then pick one by ``config.architectures``, the first registered being the default.
    """
    for config_class, model_class, auto_class_names in registrations:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class_name in auto_class_names:
            getattr(transformers, auto_class_name).register(config_class, model_class, exist_ok=True)
