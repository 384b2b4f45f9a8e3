"""Published fine-tuning recipes (``--finetune_preset``) and stochastic depth while fine-tuning."""

import pytest
import torch
from transformers import BeitModel, SwinConfig, SwinModel, ViTConfig, ViTModel
from transformers.models.beit.modeling_beit import BeitDropPath

from hf_ssl.cli.evaluate import parse_arguments, protocol_settings
from hf_ssl.eval.finetune import (
    BackboneClassifier,
    FinetuneSettings,
    finetune,
    finetune_presets,
    finetune_settings,
    parameter_groups,
    with_drop_path,
)

TINY_VIT = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, layer_norm_eps=1e-6)


def _vit() -> ViTModel:
    torch.manual_seed(0)
    return ViTModel(TINY_VIT, add_pooling_layer=False).eval()


def test_published_values():
    beit, mae = finetune_presets()["beit-base"], finetune_presets()["mae-base"]
    assert (beit.layer_decay, beit.drop_path_rate, beit.epochs, beit.warmup_fraction) == (0.65, 0.1, 100, 0.2)
    assert beit.learning_rate(1024) == pytest.approx(4e-3)
    assert (mae.layer_decay, mae.drop_path_rate, mae.epochs, mae.warmup_fraction) == (0.65, 0.1, 100, 0.05)
    assert mae.learning_rate(1024) == pytest.approx(2e-3)  # --blr 5e-4 x 1024 / 256
    assert finetune_presets()["simmim-swin-base"].layer_decay == 0.9
    assert finetune_presets()["simmim-swin-base-800ep"].layer_decay == 0.8
    assert finetune_presets()["simmim-vit-base"].layer_decay == 0.65
    assert finetune_presets()["simmim-vit-base"].learning_rate(2048) == pytest.approx(5e-3)  # 1.25e-3 x 2048 / 512
    assert all(preset.label_smoothing == 0.1 for preset in finetune_presets().values())


def test_settings_from_a_preset_with_overrides():
    settings = finetune_settings("mae-base", batch_size=64, epochs=3)
    assert (settings.batch_size, settings.epochs, settings.layer_decay, settings.drop_path_rate) == (64, 3, 0.65, 0.1)
    assert settings.learning_rate == pytest.approx(5e-4 * 64 / 256)  # the rule follows the batch
    assert finetune_settings("mae-base", learning_rate=1e-2).learning_rate == 1e-2
    assert finetune_settings() == FinetuneSettings()
    with pytest.raises(ValueError, match="finetune preset must be one of"):
        finetune_settings("dino-base")
    with pytest.raises(ValueError, match="unknown fine-tuning settings"):
        finetune_settings(None, mixup=0.8)


def test_cli_flags_override_the_preset():
    arguments = parse_arguments(["--model", "x", "--finetune_preset", "beit-base", "--finetune_batch_size", "16",
                                 "--layer_decay", "1", "--finetune_drop_path", "0.2"])
    settings = protocol_settings(arguments)["finetune"]
    assert (settings.batch_size, settings.layer_decay, settings.drop_path_rate, settings.epochs) == (16, 1.0, 0.2, 100)
    assert settings.learning_rate == pytest.approx(4e-3 * 16 / 1024)
    default = protocol_settings(parse_arguments(["--model", "x"]))["finetune"]
    assert default == FinetuneSettings()


def test_drop_path_on_a_vit_becomes_an_equal_beit():
    vit = _vit()
    converted = with_drop_path(vit, 0.1)
    assert isinstance(converted, BeitModel) and converted.config.drop_path_rate == 0.1
    assert [type(layer.drop_path) for layer in converted.layers] == [torch.nn.Identity, BeitDropPath]
    converted.eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(converted(images).last_hidden_state, vit(images).last_hidden_state,
                                   rtol=1e-4, atol=1e-5)
    assert with_drop_path(vit, 0.0) is vit


def test_drop_path_on_beit_and_swin_rebuilds_with_the_same_weights():
    swin = SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                window_size=4)).eval()
    rebuilt = with_drop_path(swin, 0.2).eval()
    assert rebuilt.config.drop_path_rate == 0.2
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images).last_hidden_state, swin(images).last_hidden_state)
    beit = with_drop_path(_vit(), 0.1)
    again = with_drop_path(beit, 0.3)
    assert isinstance(again, BeitModel) and again.config.drop_path_rate == 0.3
    with pytest.raises(ValueError, match="needs a ViT, BEiT or Swin encoder"):
        with_drop_path(torch.nn.Linear(2, 2), 0.1)


def test_finetuning_exempts_cls_token_and_positions_from_weight_decay():
    model = BackboneClassifier(_vit(), num_classes=3)
    groups = parameter_groups(model, 1e-3, 0.05, 0.65)
    exempt = {id(p) for group in groups if group["weight_decay"] == 0.0 for p in group["params"]}
    named = dict(model.named_parameters())
    assert id(named["backbone.embeddings.cls_token"]) in exempt
    assert id(named["backbone.embeddings.position_embeddings"]) in exempt
    assert id(named["backbone.layers.0.attention.q_proj.weight"]) not in exempt


def test_finetune_runs_with_a_preset_and_drop_path():
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(24, 3, 32, 32, generator=generator), torch.arange(24) % 3
    settings = finetune_settings("beit-base", epochs=2, batch_size=8)
    metrics, model = finetune(_vit(), images, labels, images, labels, **vars(settings))
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert isinstance(model.backbone, BeitModel) and model.backbone.config.drop_path_rate == 0.1
