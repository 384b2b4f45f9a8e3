"""`spatial_features`: the last feature map of any backbone, channels last, on the right grid."""

import pytest
import torch
from transformers import DeiTConfig, DeiTModel, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from hf_ssl.backbones import build_backbone, resolve_backbone, spatial_features

TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8)


def _images(height=32, width=48):
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name, size, grid", [
    ("vit-micro", (32, 48), (4, 6)),        # 8-px patches below 128 px
    ("resnet-micro", (32, 48), (1, 2)),     # stride 32
    ("swin-micro", (32, 32), None),
    ("timm/resnet10t", (32, 48), (1, 2)),
    ("timm/vit_tiny_patch16_224", (224, 224), (14, 14)),
])
def test_every_backbone_kind_gives_a_channels_last_map(name, size, grid):
    module = build_backbone(resolve_backbone(name, size[0]).nested()).eval()
    with torch.no_grad():
        features = spatial_features(module, _images(*size))
    assert features.dim() == 4 and features.shape[0] == 2
    if grid is not None:
        assert features.shape[1:3] == grid


def test_vit_tokens_land_on_their_grid_cells_and_leading_tokens_are_dropped():
    images = _images()
    for model in (Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY, num_register_tokens=4)),
                  DeiTModel(DeiTConfig(**TINY), add_pooling_layer=False)):  # CLS + 4 registers; CLS + distillation
        model.eval()
        with torch.no_grad():
            extra = {"interpolate_pos_encoding": True} if isinstance(model, DeiTModel) else {}
            tokens = model(pixel_values=images, **extra).last_hidden_state  # (2, prefix + 24, 16)
            features = spatial_features(model, images)
        assert features.shape == (2, 4, 6, 16)
        torch.testing.assert_close(features[:, 1, 2], tokens[:, tokens.shape[1] - 24 + 1 * 6 + 2])


def test_conv_maps_are_the_last_stage_permuted():
    module = build_backbone(resolve_backbone("resnet-micro", 64).nested()).eval()
    images = _images(64, 64)
    with torch.no_grad():
        torch.testing.assert_close(spatial_features(module, images),
                                   module(pixel_values=images).last_hidden_state.permute(0, 2, 3, 1))


@pytest.mark.parametrize("name", ["vit-micro", "resnet-micro", "swin-micro", "timm/resnet10t"])
def test_one_pass_gives_the_pooled_features_too(name):
    from hf_ssl.backbones import backbone_features, pooled_features

    module = build_backbone(resolve_backbone(name, 32).nested()).eval()
    images = _images(32, 32)
    with torch.no_grad():
        pooled, features = backbone_features(module, images)
        torch.testing.assert_close(pooled, pooled_features(module, images))
        torch.testing.assert_close(features, spatial_features(module, images))
