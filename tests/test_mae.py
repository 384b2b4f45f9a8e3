"""MAE: transformers' ViTMAEForPreTraining wired in (config, init fix, export, registry, recipe, training)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    ViTModel,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.mae import MAEConfig, ViTForMAE, vit_mae_encoder_to_vit_state_dict
from hf_ssl.modeling.mae.modeling_mae import sinusoidal_table
from hf_ssl.recipes import build_model, get_recipe
from hf_ssl.visualization import reconstruction_panels, save_reconstruction_figure

from test_simmim import digits_pixels, one_cpu_thread, train_steps

TINY = dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2, decoder_intermediate_size=64)


def tiny_mae(**overrides) -> ViTForMAE:
    torch.manual_seed(0)
    return ViTForMAE(MAEConfig(**{**TINY, **overrides}))


def images(batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_config_defaults_and_type():
    config = MAEConfig()
    assert isinstance(config, ViTMAEConfig) and config.model_type == "hf-ssl-mae"
    assert config.model_type not in CONFIG_MAPPING_NAMES
    assert (config.mask_ratio, config.norm_pix_loss, config.layer_norm_eps) == (0.75, True, 1e-6)
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers) == (512, 8)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(mask_ratio=1.0), r"mask_ratio must be in \[0, 1\)"),
        (dict(image_size=30), r"image_size \(30\) must be divisible by patch_size \(4\)"),
        (dict(hidden_size=33), r"hidden_size \(33\) must be divisible by num_attention_heads \(2\)"),
        (dict(decoder_hidden_size=33), r"decoder_hidden_size \(33\) must be divisible"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MAEConfig(**{**TINY, **kwargs})


def test_fresh_model_has_mae_sin_cos_position_tables():
    """transformers 5.23 leaves both fixed tables at zero when built from a config; ours are MAE's."""
    model = tiny_mae()
    encoder_table = model.vit.embeddings.position_embeddings
    decoder_table = model.decoder.decoder_pos_embed
    torch.testing.assert_close(encoder_table, sinusoidal_table(encoder_table))
    torch.testing.assert_close(decoder_table, sinusoidal_table(decoder_table))
    assert encoder_table.abs().sum() > 0 and not encoder_table.requires_grad
    assert torch.equal(encoder_table[0, 0], torch.zeros(32))  # CLS row
    # hand check of one entry: patch (row 0, col 1), first dim of the (swapped) width block is sin(1)
    assert encoder_table[0, 2, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item(), abs=1e-6)


def test_fresh_model_has_maes_own_initialisation():
    """models_mae.py: xavier-uniform for every Linear (transformers draws N(0, 0.02)) and for the
    patch projection viewed as a Linear, zero biases, LayerNorm 1 / 0, tokens N(0, 0.02)."""
    model = tiny_mae(hidden_size=64, intermediate_size=256, decoder_hidden_size=64, decoder_intermediate_size=256)
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert len(linears) > 10
    for linear in linears:
        fan_out, fan_in = linear.weight.shape
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert linear.weight.abs().max() <= bound
        # uniform on [-bound, bound]: std = bound / sqrt(3); N(0, 0.02) would give 0.02
        assert linear.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.15), linear
        assert torch.count_nonzero(linear.bias) == 0
    projection = model.vit.embeddings.patch_embeddings.projection.weight.flatten(1)  # (64, 3 * 4 * 4)
    bound = (6.0 / sum(projection.shape)) ** 0.5
    assert projection.abs().max() <= bound and projection.std().item() == pytest.approx(bound / 3**0.5, rel=0.15)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)) and torch.count_nonzero(module.bias) == 0
    for token in (model.vit.embeddings.cls_token, model.decoder.mask_token):
        assert token.abs().max() > 0.02 * 0.5 and token.std().item() == pytest.approx(0.02, rel=0.35)


def test_forward_is_transformers_forward():
    """Same weights and noise: loss and logits equal transformers' ViTMAEForPreTraining."""
    ours = tiny_mae().eval()
    reference = ViTMAEForPreTraining(ViTMAEConfig(**ours.config.to_diff_dict() | {"model_type": "vit_mae"})).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    ours_out, reference_out = ours(images(), noise=noise), reference(images(), noise=noise)
    torch.testing.assert_close(ours_out.logits, reference_out.logits)
    torch.testing.assert_close(ours_out.loss, reference_out.loss)
    assert ours_out.mask.sum(dim=1).tolist() == [48.0, 48.0]  # 75 % of 64 patches


def test_export_gives_a_vit_model_equal_to_the_mae_encoder_without_masking(tmp_path):
    model = tiny_mae().eval()
    model.export_backbone(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "vit" and "hf-ssl" not in (tmp_path / "config.json").read_text()
    assert (tmp_path / "preprocessor_config.json").exists()
    exported = AutoModel.from_pretrained(tmp_path).eval()
    assert type(exported) is ViTModel
    pixel_values = images(3, seed=2)
    model.config.mask_ratio = 0.0  # keep every patch ...
    identity_order = torch.arange(64, dtype=torch.float32).expand(3, 64)  # ... in the original order
    with torch.no_grad():
        expected = model.vit(pixel_values, noise=identity_order).last_hidden_state  # (3, 65, 32)
        torch.testing.assert_close(exported(pixel_values).last_hidden_state, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.get_backbone()(pixel_values).last_hidden_state, expected, rtol=0, atol=1e-5)
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=10)
    assert classifier(pixel_values).logits.shape == (3, 10)


def test_weight_conversion_refuses_incomplete_or_misshaped_weights():
    model = tiny_mae()
    template = ViTModel(model.config.encoder_config(), add_pooling_layer=False).state_dict()
    state = model.vit.state_dict()
    del state["layernorm.weight"]
    with pytest.raises(KeyError, match="layernorm.weight"):
        vit_mae_encoder_to_vit_state_dict(state, template)
    state = model.vit.state_dict()
    state["layernorm.weight"] = torch.ones(7)
    with pytest.raises(ValueError, match="layernorm.weight has shape"):
        vit_mae_encoder_to_vit_state_dict(state, template)


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForPreTraining])
def test_auto_classes_round_trip(tmp_path, auto_class):
    model = tiny_mae()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MAEConfig)
    loaded = auto_class.from_pretrained(tmp_path)
    assert type(loaded) is ViTForMAE
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_recipe():
    recipe = get_recipe("mae")
    assert recipe.reconstruction_panels is not None and recipe.supported_backbones == ("vit",)
    assert (recipe.default_model, recipe.default_image_size) == ("vit-small", 224)
    assert (recipe.optimizer.base_learning_rate, recipe.optimizer.reference_batch_size) == (1.5e-4, 256)
    assert recipe.optimizer.betas == (0.9, 0.95)
    model = build_model("mae", "vit-micro", 32, {"num_hidden_layers": 1})
    assert (model.config.patch_size, model.config.decoder_hidden_size, model.config.mask_ratio) == (8, 96, 0.75)
    assert model(images()).loss.ndim == 0
    with pytest.raises(ValueError, match="needs a vit backbone"):
        build_model("mae", "swin-micro", 32)


def test_reconstruction_figure(tmp_path):
    from PIL import Image

    model = tiny_mae()
    path = save_reconstruction_figure(model, images(2), tmp_path / "reconstruction.png",
                                      image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    with Image.open(path) as figure:
        assert figure.format == "PNG"
    panels = reconstruction_panels(model, images(2), seed=1)
    assert panels.hidden.shape == (2, 32, 32) and panels.hidden.float().mean().item() == pytest.approx(0.75)
    # norm_pix_loss predictions are mapped back with each true patch's statistics: a model that
    # predicted the normalised target exactly would reproduce the image
    patches = model.patchify(images(2))
    mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
    torch.testing.assert_close(model.unpatchify(((patches - mean) / std) * std + mean), images(2))


@pytest.mark.slow
def test_short_training_on_digits_lowers_the_loss():
    train_pixels, _, _, _ = digits_pixels()
    torch.manual_seed(0)
    model = build_model("mae", "vit-micro", 32, {"num_hidden_layers": 2, "decoder_num_hidden_layers": 1})
    with one_cpu_thread():
        losses = train_steps(model, train_pixels, steps=60, batch_size=32, learning_rate=2e-3)
    assert sum(losses[-10:]) / 10 < 0.85 * sum(losses[:10]) / 10, (losses[:10], losses[-10:])
