"""ViTForSplitMask / ViTForBEiT: forward contract, masking behaviour, errors, save/load, export."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedImageModeling,
    AutoModelForPreTraining,
    ViTModel,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

import hf_ssl
from hf_ssl import BEiTConfig, SplitMaskConfig, ViTForBEiT, ViTForSplitMask

from tiny_models import TINY_BEIT, tiny_beit, tiny_splitmask


def _images(batch=4, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_splitmask_output_fields_and_shapes():
    model = tiny_splitmask()
    out = model(_images())
    num_patches = model.config.num_patches  # 16
    assert list(out.keys())[0] == "loss"
    assert out.logits.shape == (8, num_patches // 2, 32)  # 2 views x 4 images
    assert out.target_token_ids.shape == (8, num_patches // 2)
    # The seed's descriptor: the average decoder output, matched without a projection head.
    assert model.projection is None and out.global_descriptors.shape == (2, 4, 24)
    assert out.encoder_last_hidden_state.shape == (8, 1 + num_patches // 2, 32)
    out.loss.backward()
    assert model.vit.layers[0].attention.q_proj.weight.grad is not None
    projected = tiny_splitmask(use_projection_head=True)
    projected(_images()).loss.backward()
    assert projected(_images()).global_descriptors.shape == (2, 4, 16)
    assert projected.projection[0].weight.grad is not None


def test_encoder_processes_only_the_visible_half_in_one_shared_call():
    model = tiny_splitmask()
    seen = []
    model.vit.layers[0].register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    model(_images(batch=3))
    # One call, both views stacked (shared weights): 2 * 3 sequences of CLS + N/2 visible patches.
    assert seen == [(6, 1 + 8, 32)]
    beit = tiny_beit()
    seen_beit = []
    beit.vit.layers[0].register_forward_pre_hook(lambda module, args: seen_beit.append(tuple(args[0].shape)))
    beit(_images(batch=3))
    assert seen_beit == [(3, 1 + 16, 32)]  # BEiT's encoder sees every position


def test_views_are_complementary_and_predictions_target_the_hidden_half():
    model = tiny_splitmask()
    images = _images(batch=2)
    split = torch.zeros(2, 16, dtype=torch.bool)
    split[0, :8] = True
    split[1, 8:] = True
    out = model(images, bool_masked_pos=split)
    view1_hidden, view2_hidden = out.hidden_patch_indices.chunk(2)
    assert torch.equal(view1_hidden[0], torch.arange(8)) and torch.equal(view2_hidden[0], torch.arange(8, 16))
    tokens = model.tokenizer.encode(images)
    torch.testing.assert_close(out.target_token_ids[:2], tokens.gather(1, view1_hidden))
    # Hidden patches never influence the encoder of the view that hides them.
    altered = images.clone()
    altered[0, :, :16, :] += 5.0  # patches 0..7 of image 0 (the first two patch rows)
    out_altered = model(altered, bool_masked_pos=split)
    torch.testing.assert_close(out_altered.encoder_last_hidden_state[0], out.encoder_last_hidden_state[0])
    assert not torch.allclose(out_altered.encoder_last_hidden_state[2], out.encoder_last_hidden_state[2])


def test_odd_number_of_patches_encodes_views_separately():
    model = tiny_splitmask(image_size=24, patch_size=8)  # 3 x 3 = 9 patches: views of 4 and 5
    seen = []
    model.vit.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    out = model(_images(batch=2, size=24))
    assert sorted(seen) == [1 + 4, 1 + 5]
    assert torch.isfinite(out.loss)


def test_beit_has_no_contrastive_term_and_masks_the_ratio():
    model = tiny_beit()
    out = model(_images())
    assert "contrastive_loss" not in out and "global_descriptors" not in out
    assert not any(name.startswith(("decoder", "projection")) for name in model.state_dict())
    torch.testing.assert_close(out.loss, out.mim_loss)
    hidden = round(0.4 * 16)
    assert torch.all(out.bool_masked_pos.sum(dim=1) == hidden)
    assert out.logits.shape == (4, hidden, 32)


def test_beit_refuses_a_given_mask_that_hides_nothing_or_a_different_count_per_image():
    model = tiny_beit()
    ragged = torch.zeros(2, 16, dtype=torch.bool)
    ragged[0, :3], ragged[1, :5] = True, True
    with pytest.raises(ValueError, match="same number"):
        model(_images(batch=2), bool_masked_pos=ragged)
    with pytest.raises(ValueError, match="at least one patch"):
        model(_images(batch=2), bool_masked_pos=torch.zeros(2, 16, dtype=torch.bool))


def test_unfitted_tokenizer_fails_clearly():
    model = tiny_splitmask(fitted=False)
    with pytest.raises(RuntimeError, match="fit_tokenizer"):
        model(_images())


def test_tokenizer_that_does_not_match_its_config_version_fails(tmp_path):
    model = tiny_splitmask()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["tokenizer_fingerprint"] = "0" * 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = ViTForSplitMask.from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="different runs"):
        reloaded(_images())


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (torch.randn(2, 3, 48, 48), ValueError, "expects 32x32"),
        (torch.randn(2, 1, 32, 32), ValueError, "channels"),
        (torch.randn(3, 32, 32), ValueError, "batch, channels, height, width"),
        (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), TypeError, "floating-point"),
    ],
)
def test_bad_pixel_values_raise_clear_errors(bad, error, message):
    with pytest.raises(error, match=message):
        tiny_splitmask()(bad)


def test_bad_masks_and_configs_raise_clear_errors():
    model = tiny_splitmask()
    with pytest.raises(ValueError, match="num_patches // 2"):
        model(_images(batch=1), bool_masked_pos=torch.ones(1, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(batch, num_patches\)"):
        model(_images(batch=1), bool_masked_pos=torch.ones(1, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="patch_size"):
        SplitMaskConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="objective must be 'splitmask'"):
        SplitMaskConfig(objective="mae")
    with pytest.raises(ValueError, match="decoder_num_hidden_layers >= 1"):
        SplitMaskConfig(decoder_num_hidden_layers=0)
    with pytest.raises(ValueError, match="tokenizer_method"):
        SplitMaskConfig(tokenizer_method="dvae")


def test_vocab_size_mismatch_on_load_is_an_error(tmp_path):
    tiny_splitmask().save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        ViTForSplitMask.from_pretrained(tmp_path, tokenizer_vocab_size=64)
    # Forcing the load re-initialises the vocabulary; its fingerprint then no longer matches
    # the config and the model refuses to produce targets.
    reloaded = ViTForSplitMask.from_pretrained(tmp_path, tokenizer_vocab_size=64, ignore_mismatched_sizes=True)
    with pytest.raises(RuntimeError, match="tokenizer_vocab_size"):
        reloaded(_images())


@pytest.mark.parametrize("builder", [tiny_splitmask, tiny_beit])
def test_save_and_reload_give_identical_outputs(tmp_path, builder):
    model = builder().eval()
    images = _images()
    mask = model(images).bool_masked_pos
    expected = model(images, bool_masked_pos=mask)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    for loader in (type(model), AutoModel, AutoModelForPreTraining):
        reloaded = loader.from_pretrained(tmp_path).eval()
        assert type(reloaded) is type(model)
        torch.testing.assert_close(reloaded.tokenizer.codebook, model.tokenizer.codebook)
        got = reloaded(images, bool_masked_pos=mask)
        torch.testing.assert_close(got.loss, expected.loss)
        torch.testing.assert_close(got.logits, expected.logits)


def test_registration_uses_names_that_do_not_clash_with_transformers():
    for config_class in (SplitMaskConfig, BEiTConfig):
        assert config_class.model_type not in CONFIG_MAPPING_NAMES
        assert isinstance(AutoConfig.for_model(config_class.model_type), config_class)
    assert AutoModelForMaskedImageModeling.from_config(BEiTConfig(**TINY_BEIT)).__class__ is ViTForBEiT
    hf_ssl.register_auto_classes()  # idempotent
    with pytest.raises(ValueError):
        AutoConfig.register("vit", SplitMaskConfig)


def test_exported_backbone_is_a_plain_vit_with_the_same_weights(tmp_path):
    model = tiny_beit().eval()  # BEiT has the extra mask token that must be dropped
    model.export_backbone(tmp_path / "backbone")
    config = json.loads((tmp_path / "backbone" / "config.json").read_text())
    assert config["model_type"] == "vit" and "auto_map" not in config
    backbone = AutoModel.from_pretrained(tmp_path / "backbone").eval()
    assert type(backbone) is ViTModel
    images = _images()
    torch.testing.assert_close(backbone(images).last_hidden_state, model.vit(images).last_hidden_state)


@pytest.mark.slow
def test_exported_backbone_loads_for_classification_without_hf_ssl(tmp_path):
    tiny_splitmask().export_backbone(tmp_path / "backbone")
    script = f"""
import sys, torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'backbone')!r}, num_labels=10)
logits = model(torch.randn(2, 3, 32, 32)).logits
assert logits.shape == (2, 10), logits.shape
assert "hf_ssl" not in sys.modules
print("ok", type(model).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ok ViTForImageClassification" in result.stdout


@pytest.mark.parametrize("builder", [tiny_splitmask, tiny_beit])
def test_token_prediction_figure_is_written(tmp_path, builder):
    from PIL import Image

    from hf_ssl.visualization import reconstruction_panels, save_reconstruction_figure

    model = builder()
    images = _images(batch=3)
    panels = reconstruction_panels(model, images, seed=0)
    assert panels.prediction.shape == images.shape and panels.hidden.shape == (3, 32, 32)
    hidden_fraction = panels.hidden.float().mean().item()
    assert hidden_fraction == pytest.approx(0.5 if isinstance(model, ViTForSplitMask) else 6 / 16)
    # Visible pixels of the rendering are the tokenizer's own downsampling of the input, hidden
    # ones differ where the predicted token differs from the target token.
    path = save_reconstruction_figure(model, images, tmp_path / "tokens.png", image_mean=[0.5] * 3, image_std=[0.5] * 3)
    with Image.open(path) as figure:
        assert figure.size[0] > 300 and figure.size[1] > 200
