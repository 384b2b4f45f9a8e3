"""Tiny configurations shared by tests: fast on 2 CPU cores, still real architectures."""

import torch

from hf_ssl import BEiTConfig, SplitMaskConfig, ViTForBEiT, ViTForSplitMask

TINY_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    decoder_hidden_size=24,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=48,
    tokenizer_vocab_size=32,
    tokenizer_resolution=4,
    projection_dim=16,
)

# BEiT has no decoder and no contrastive head.
TINY_BEIT = {key: value for key, value in TINY_VIT.items() if not key.startswith("decoder_") and key != "projection_dim"}


def tiny_splitmask(fitted: bool = True, **overrides) -> ViTForSplitMask:
    torch.manual_seed(0)
    model = ViTForSplitMask(SplitMaskConfig(**{**TINY_VIT, **overrides}))
    if fitted:
        images = torch.randn(8, model.config.num_channels, model.config.image_size, model.config.image_size,
                             generator=torch.Generator().manual_seed(1))
        model.fit_tokenizer([images], num_epochs=2, progress=False)
    return model


def tiny_beit(fitted: bool = True, **overrides) -> ViTForBEiT:
    torch.manual_seed(0)
    model = ViTForBEiT(BEiTConfig(**{**TINY_BEIT, **overrides}))
    if fitted:
        images = torch.randn(8, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(1))
        model.fit_tokenizer([images], num_epochs=2, progress=False)
    return model
