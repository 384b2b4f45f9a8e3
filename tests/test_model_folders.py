"""``--model <folder>`` as users bring them: saved by transformers or by timm, with safetensors,
pickle or no weights, a damaged header, or a config describing a model no machine holds. Each is
resolved before any data is read or weight allocated: it trains, or is refused with its reason."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTConfig, ViTModel

from hf_ssl.backbones import resolve_backbone
from hf_ssl.recipes import build_model
from hf_ssl.training import ConfigurationError
from hf_ssl.training.model_size import check_model_fits

TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, layer_norm_eps=1e-6)


@pytest.fixture
def timm_folder(tmp_path):
    """A timm ResNet saved as timm saves it: its model_args carry num_classes."""
    import timm
    from timm.models import save_for_hf

    folder = tmp_path / "timm-resnet"
    save_for_hf(timm.create_model("resnet10t", pretrained=False, num_classes=10), folder,
                model_args={"num_classes": 10}, safe_serialization=True)
    return folder


def test_a_timm_folder_with_model_args_builds_and_loads_its_weights(timm_folder):
    """It exited 2 with "create_model() got multiple values for keyword argument 'num_classes'"."""
    from safetensors.torch import load_file

    from hf_ssl.backbones import load_pretrained_backbone

    spec = resolve_backbone(str(timm_folder), 32)
    assert spec.is_timm and spec.weights == str(timm_folder) and "num_classes" not in spec.config["model_args"]
    model = build_model("simclr", model=str(timm_folder), image_size=32)
    model.load_backbone_weights(load_pretrained_backbone(spec.nested(), spec.weights))
    saved = load_file(str(timm_folder / "model.safetensors"))
    backbone = model.get_backbone().state_dict()
    assert torch.equal(backbone["conv1.0.weight"], saved["conv1.0.weight"])


@pytest.mark.parametrize("saved_by", ["transformers", "timm"])
def test_a_folder_with_only_pickle_weights_is_refused_not_trained_from_random_init(saved_by, tmp_path, timm_folder):
    if saved_by == "transformers":
        folder = tmp_path / "vit"
        ViTConfig(**TINY_VIT).save_pretrained(folder)
        torch.save(ViTModel(ViTConfig(**TINY_VIT)).state_dict(), folder / "pytorch_model.bin")
    else:
        from safetensors.torch import load_file

        folder = timm_folder
        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")  # timm's default format
        (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"holds only pickle weights \(pytorch_model.bin\), which hf-ssl never loads"):
        resolve_backbone(str(folder), 32)
    assert resolve_backbone(str(folder), 32, from_scratch=True).weights is None  # the architecture alone, asked for


def test_a_folder_without_weights_or_with_a_damaged_header_is_refused(tmp_path):
    folder = tmp_path / "vit"
    ViTConfig(**TINY_VIT).save_pretrained(folder)
    with pytest.raises(ValueError, match="holds a config.json but no weights .* --from_scratch"):
        resolve_backbone(str(folder), 32)
    (folder / "model.safetensors").write_bytes(b"\xff" * 8 + b"not a header")
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file .*header"):
        resolve_backbone(str(folder), 32)
    ViTModel(ViTConfig(**TINY_VIT)).save_pretrained(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # header intact, tensors cut
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        resolve_backbone(str(folder), 32)


def test_a_config_no_machine_can_train_is_refused_before_allocating(monkeypatch):
    """A 16384-wide 12-layer ViT config (38.7 billion parameters) was only stopped by memory."""
    monkeypatch.setattr("hf_ssl.training.model_size.device_memory_bytes", lambda device: 64 * 10**9)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16384, num_hidden_layers=12, num_attention_heads=16,
                       intermediate_size=65536)
    with torch.device("meta"):
        model = ViTModel(config, add_pooling_layer=False)
    with pytest.raises(ConfigurationError, match=r"--model huge has 38.7 billion parameters: training it needs at least "
                                                  r"618.6 GB .* cpu memory here is 64.0 GB"):
        check_model_fits(model, torch.device("cpu"), name="--model huge")
    check_model_fits(model, torch.device("cpu"), shards=16)  # 38.7 GB per process under FSDP: it fits
    with torch.device("meta"):
        small = ViTModel(ViTConfig(**TINY_VIT))
    check_model_fits(small, torch.device("cpu"))
