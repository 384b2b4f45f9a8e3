"""The trainer's attention choice: eager on CPU under bf16, SDPA elsewhere; same values, nothing saved."""

from __future__ import annotations

import json

import pytest
import torch

from hf_ssl.masking import random_split_mask
from hf_ssl.training.attention import resolve_attention, use_eager_attention
from tiny_models import tiny_splitmask


def _attention_implementations(model) -> set[str]:
    return {module.config._attn_implementation for module in model.modules()
            if "Attention" in type(module).__name__ and hasattr(module, "config")}


def test_auto_picks_eager_only_on_cpu_under_bf16():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_attention("auto", cpu, "bf16") == "eager"
    assert [resolve_attention("auto", cpu, precision) for precision in ("no", "fp16")] == ["sdpa", "sdpa"]
    assert [resolve_attention("auto", cuda, precision) for precision in ("no", "bf16")] == ["sdpa", "sdpa"]
    assert resolve_attention("sdpa", cpu, "bf16") == "sdpa" and resolve_attention("eager", cuda, "no") == "eager"
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve_attention("flash", cpu, "no")


@pytest.mark.parametrize("encoder_type", ["vit", "beit"])
def test_eager_and_sdpa_compute_the_same_loss_and_gradients(encoder_type):
    """BEiT's encoder attends with a trainable relative position bias, the case SDPA cannot fuse."""
    model = tiny_splitmask(encoder_type=encoder_type)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    split = random_split_mask(4, model.config.num_patches, generator=torch.Generator().manual_seed(3))

    def loss_and_gradients(autocast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(pixel_values=pixels, bool_masked_pos=split).loss
        loss.backward()
        return loss.detach(), torch.cat([parameter.grad.flatten() for parameter in model.parameters()
                                         if parameter.grad is not None])

    assert _attention_implementations(model) == {"sdpa"}
    sdpa_loss, sdpa_gradients = loss_and_gradients(autocast=False)
    sdpa_bf16_loss, _ = loss_and_gradients(autocast=True)
    assert use_eager_attention(model) >= 2  # the encoder's config and the decoder's
    assert _attention_implementations(model) == {"eager"}
    eager_loss, eager_gradients = loss_and_gradients(autocast=False)
    torch.testing.assert_close(eager_loss, sdpa_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eager_gradients, sdpa_gradients, rtol=1e-4, atol=1e-6)
    eager_bf16_loss, _ = loss_and_gradients(autocast=True)
    torch.testing.assert_close(eager_bf16_loss, sdpa_bf16_loss, rtol=2e-2, atol=0)
    assert use_eager_attention(model) == 0  # already there


def test_the_choice_is_not_saved_with_the_model(tmp_path):
    from transformers import AutoModel

    model = tiny_splitmask()
    use_eager_attention(model)
    model.save_pretrained(tmp_path / "run")
    model.export_backbone(tmp_path / "backbone")
    for folder in ("run", "backbone"):
        config = json.loads((tmp_path / folder / "config.json").read_text())
        assert not [key for key in config if "attn" in key], config
    assert AutoModel.from_pretrained(tmp_path / "backbone").config._attn_implementation == "sdpa"


def test_timm_attention_blocks_follow_the_choice():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0).eval()
    blocks = [module for module in model.modules() if hasattr(module, "fused_attn")]
    assert blocks and all(block.fused_attn for block in blocks)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = model(images)
        assert use_eager_attention(model) == len(blocks)
        assert not any(block.fused_attn for block in blocks)
        torch.testing.assert_close(model(images), fused, rtol=1e-4, atol=1e-5)


def test_a_composite_model_that_is_eager_at_the_top_can_still_be_rebuilt_from_its_config():
    """DINO's wrapper cannot dispatch SDPA, so its own config is eager. An earlier version also
    switched eager configs to "sdpa" for fp32 runs, and the FSDP gather, which rebuilds the model
    from its config, then failed ("BackboneForDINO does not support ... scaled_dot_product_attention")."""
    from test_dino import tiny_model

    model = tiny_model()
    before = model.config._attn_implementation
    assert use_eager_attention(model) >= 1
    assert model.config._attn_implementation == "eager" and before == "eager"
    assert _attention_implementations(model) == {"eager"}
    type(model)(model.config)  # what whole_model does under FSDP; raised before
