"""Encoder fields of the masked-image-modeling configs, read from a resolved ``--model``.

SplitMask, BEiT, SimMIM and MAE keep their encoder's fields flat in their own config (HF names),
so a preset, a transformers ViT / Swin folder or Hub id all become the same dict of fields.
"""

from __future__ import annotations

from hf_ssl.backbones import BackboneSpec

VIT_FIELDS = (
    "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "layer_norm_eps", "qkv_bias", "initializer_range",
)
SWIN_FIELDS = (
    "image_size", "patch_size", "num_channels", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
    "hidden_act", "layer_norm_eps", "qkv_bias", "initializer_range",
)


def masked_vit_fields(recipe, backbone: BackboneSpec) -> dict:
    """The ViT (or, for recipes that support it, Swin) fields of `backbone`, after checking the family.

    Raises:
        ValueError: the recipe cannot mask this backbone (`Recipe.check_backbone`).
    """
    recipe.check_backbone(backbone)
    config = backbone.transformers_config()
    names = SWIN_FIELDS if backbone.family == "swin" else VIT_FIELDS
    fields = {name: getattr(config, name) for name in names if hasattr(config, name)}
    for name in ("image_size", "patch_size"):
        if isinstance(fields.get(name), (list, tuple)):
            fields[name] = int(fields[name][0])
    return fields


__all__ = ["SWIN_FIELDS", "VIT_FIELDS", "masked_vit_fields"]
