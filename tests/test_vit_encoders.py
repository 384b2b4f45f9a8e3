"""BEiT's ViT (transformers' `BeitModel`) inside SplitMask, BEiT and SimMIM: drop path, layer scale,
shared relative position bias, exact visible-subset encoding, BEiT's init, and a plain export."""

import math

import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification, BeitModel, pipeline
from transformers.models.beit.modeling_beit import BeitDropPath

from hf_ssl import SimMIMConfig, ViTForSimMIM
from hf_ssl.vit_encoders import encode_tokens, embed_patches, shared_relative_position_bias

from tiny_models import tiny_beit, tiny_splitmask

BEIT_ENCODER = dict(encoder_type="beit", drop_path_rate=0.1, layer_scale_init_value=0.1,
                    use_absolute_position_embeddings=False, use_shared_relative_position_bias=True)


def _images(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _randomise_bias(encoder: BeitModel) -> None:
    """A fitted relative position table (a fresh one is all zeros, which would hide indexing errors)."""
    with torch.no_grad():
        table = encoder.shared_position_bias.relative_position_bias_table
        table.copy_(torch.randn(table.shape, generator=torch.Generator().manual_seed(7)))


def test_beit_encoder_has_drop_path_layer_scale_and_a_shared_relative_position_bias():
    model = tiny_splitmask(**BEIT_ENCODER)
    encoder = model.get_backbone()
    assert isinstance(encoder, BeitModel) and model.beit is encoder and not hasattr(model, "vit")
    assert encoder.embeddings.position_embeddings is None and encoder.shared_position_bias is not None
    assert encoder.embeddings.mask_token is None  # kept out of the exported encoder
    rates = [layer.drop_path.drop_prob if isinstance(layer.drop_path, BeitDropPath) else 0.0 for layer in encoder.layers]
    assert rates == pytest.approx([0.0, 0.1])  # linear over depth, BEiT's rule
    for layer in encoder.layers:
        assert torch.equal(layer.lambda_1, torch.full((32,), 0.1)) and torch.equal(layer.lambda_2, torch.full((32,), 0.1))
    output = model(_images(4))
    output.loss.backward()
    assert encoder.shared_position_bias.relative_position_bias_table.grad.abs().sum() > 0
    assert encoder.layers[0].lambda_1.grad is not None


def test_plain_vit_config_refuses_beit_features():
    with pytest.raises(ValueError, match="need encoder_type='beit'"):
        tiny_splitmask(fitted=False, drop_path_rate=0.1)
    with pytest.raises(ValueError, match="encoder_type must be one of"):
        tiny_splitmask(fitted=False, encoder_type="deit")
    with pytest.raises(ValueError, match="use_shared_relative_position_bias=True"):
        tiny_splitmask(fitted=False, encoder_type="beit", use_relative_position_bias=True)


def test_visible_subset_encoding_equals_full_attention_restricted_to_the_visible_patches():
    """Encoding K visible patches with the gathered bias = running the full sequence where every
    query may attend only to CLS and the visible keys (the rest masked out with -inf)."""
    model = tiny_splitmask(**BEIT_ENCODER).eval()
    encoder = model.beit
    _randomise_bias(encoder)
    images = _images()
    grid = model.config.grid_size
    visible = torch.stack([torch.tensor([0, 3, 5, 6, 9, 10, 12, 15]), torch.tensor([1, 2, 4, 7, 8, 11, 13, 14])])
    tokens = embed_patches(encoder, images)  # (2, 16, 32)
    subset = tokens.gather(1, visible.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    with torch.no_grad():
        encoded = encode_tokens(encoder, subset, grid, positions=visible)  # (2, 9, 32)
        keep = torch.zeros(2, 17, dtype=torch.bool)
        keep[:, 0] = True
        keep.scatter_(1, visible + 1, True)
        blocked = torch.zeros(2, 1, 1, 17).masked_fill(~keep[:, None, None, :], float("-inf"))
        hidden = torch.cat([encoder.embeddings.cls_token.expand(2, -1, -1), tokens], dim=1)
        bias = shared_relative_position_bias(encoder, grid, None) + blocked
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask=bias, resolution=(32, 32))
        full = encoder.layernorm(hidden)
    expected = torch.cat([full[:, :1], full[:, 1:].gather(1, (visible).unsqueeze(-1).expand(-1, -1, 32))], dim=1)
    torch.testing.assert_close(encoded, expected, rtol=1e-4, atol=1e-5)


def test_all_positions_in_any_order_give_the_full_encoding_reordered():
    model = tiny_splitmask(**BEIT_ENCODER).eval()
    _randomise_bias(model.beit)
    tokens = embed_patches(model.beit, _images())
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)])
    with torch.no_grad():
        full = encode_tokens(model.beit, tokens, (4, 4))
        shuffled = encode_tokens(model.beit, tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, 32)), (4, 4), order)
    torch.testing.assert_close(shuffled[:, 1:], full[:, 1:].gather(1, order.unsqueeze(-1).expand(-1, -1, 32)),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shuffled[:, 0], full[:, 0], rtol=1e-4, atol=1e-5)


def test_beit_init_is_the_official_one():
    """Truncated at one std (beit/modeling_pretrain.py) and residual weights divided by sqrt(2 l)."""
    torch.manual_seed(0)
    model = tiny_splitmask(fitted=False, hidden_size=128, num_attention_heads=4, intermediate_size=256,
                           num_hidden_layers=4, **BEIT_ENCODER)
    std = model.config.initializer_range
    encoder = model.beit
    assert encoder.embeddings.patch_embeddings.projection.weight.abs().max() <= std
    assert encoder.layers[0].attention.q_proj.weight.abs().max() <= std
    assert encoder.embeddings.cls_token.abs().max() <= std and encoder.embeddings.cls_token.abs().sum() > 0
    assert torch.count_nonzero(encoder.shared_position_bias.relative_position_bias_table) == 0
    first, last = encoder.layers[0].attention.o_proj.weight.std(), encoder.layers[3].attention.o_proj.weight.std()
    assert (first / last).item() == pytest.approx(math.sqrt(4), rel=0.1)  # sqrt(2 * 4) / sqrt(2 * 1)
    fc2_first, fc2_last = encoder.layers[0].mlp.fc2.weight.std(), encoder.layers[3].mlp.fc2.weight.std()
    assert (fc2_first / fc2_last).item() == pytest.approx(2.0, rel=0.1)


def test_beit_objective_keeps_its_mask_token_outside_the_encoder():
    model = tiny_beit(**BEIT_ENCODER)
    assert model.mask_token is not None and model.mask_token.shape == (1, 1, 32)
    assert model.mask_token.abs().sum() > 0 and model.mask_token.abs().max() <= model.config.initializer_range
    output = model(_images(3))
    output.loss.backward()
    assert model.mask_token.grad.abs().sum() > 0
    assert output.encoder_last_hidden_state.shape == (3, 17, 32)


@pytest.mark.parametrize("builder", ["splitmask", "beit", "simmim"])
def test_export_is_a_plain_beit_model_with_equal_outputs(tmp_path, builder):
    if builder == "simmim":
        torch.manual_seed(0)
        model = ViTForSimMIM(SimMIMConfig(backbone="vit", image_size=32, patch_size=8, mask_patch_size=8, hidden_size=32,
                                          num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                          **BEIT_ENCODER))
    else:
        model = (tiny_splitmask if builder == "splitmask" else tiny_beit)(**BEIT_ENCODER)
    model.eval()
    _randomise_bias(model.get_backbone())
    folder = model.export_backbone(tmp_path / "backbone")
    loaded = AutoModel.from_pretrained(folder).eval()
    assert type(loaded) is BeitModel and loaded.config.model_type == "beit"
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).last_hidden_state, model.get_backbone()(images).last_hidden_state)
    classifier = AutoModelForImageClassification.from_pretrained(folder, num_labels=5)
    assert classifier(pixel_values=images).logits.shape == (2, 5)
    extractor = pipeline("image-feature-extraction", model=str(folder))
    from PIL import Image

    features = extractor(Image.new("RGB", (40, 40), color=(120, 30, 200)))
    assert len(features[0]) == 1 + 16


def test_simmim_vit_with_beit_encoder_trains_and_decays_nothing_it_should_not():
    torch.manual_seed(0)
    model = ViTForSimMIM(SimMIMConfig(backbone="vit", image_size=32, patch_size=8, mask_patch_size=8, hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **BEIT_ENCODER))
    assert isinstance(model.get_backbone(), BeitModel) and model.mask_token is not None
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::2] = True
    output = model(_images(), bool_masked_pos=mask)
    output.loss.backward()
    assert model.mask_token.grad.abs().sum() > 0
    # SimMIM's timm-style init is truncated at +-2 (not one std), the mask token at one std
    assert model.mask_token.abs().max() <= model.config.initializer_range
    with pytest.raises(ValueError, match="apply to backbone='vit' only"):
        SimMIMConfig(backbone="swin", image_size=32, patch_size=4, mask_patch_size=8, embed_dim=16, depths=[2, 2],
                     num_heads=[2, 4], window_size=4, encoder_type="beit")
