"""Named backbone sizes shared by every method (``--model vit-small``).

Each preset is a dict of HF config fields; a method's recipe merges it into its own config, so
the exported encoder is a plain `ViTModel` / `SwinModel` of that size.
"""

from __future__ import annotations

VIT_PRESETS: dict[str, dict] = {
    # A ViT small enough to pre-train on 2 CPU cores in minutes (the bundled default run, tests).
    "vit-micro": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384),
    "vit-tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "vit-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vit-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "vit-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}

SWIN_PRESETS: dict[str, dict] = {
    "swin-micro": dict(embed_dim=48, depths=[2, 2], num_heads=[3, 6]),
    "swin-tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "swin-small": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    "swin-base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}


def backbone_preset(name: str) -> tuple[str, dict]:
    """Return ``(family, config_fields)`` for a preset name such as ``"vit-small"``.

    Raises:
        ValueError: the name is not a known preset; the message lists the known ones.
    """
    if name in VIT_PRESETS:
        return "vit", dict(VIT_PRESETS[name])
    if name in SWIN_PRESETS:
        return "swin", dict(SWIN_PRESETS[name])
    known = ", ".join(sorted(VIT_PRESETS) + sorted(SWIN_PRESETS))
    raise ValueError(f"Unknown model preset {name!r}; known presets: {known}")
