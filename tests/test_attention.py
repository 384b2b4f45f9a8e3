"""The trainer's attention choice: lean on CPU under bf16, SDPA elsewhere; same values, nothing saved."""

from __future__ import annotations

import json

import pytest
import torch

from hf_ssl.masking import random_split_mask
from hf_ssl.training.attention import LEAN_IMPLEMENTATION, resolve_attention, use_attention
from tiny_models import tiny_splitmask


def _attention_implementations(model) -> set[str]:
    return {module.config._attn_implementation for module in model.modules()
            if "Attention" in type(module).__name__ and hasattr(module, "config")}


def test_auto_picks_lean_only_on_cpu_under_bf16():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_attention("auto", cpu, "bf16") == "lean"
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
    assert use_attention(model, "eager") >= 2  # the encoder's config and the decoder's
    assert _attention_implementations(model) == {"eager"}
    eager_loss, eager_gradients = loss_and_gradients(autocast=False)
    torch.testing.assert_close(eager_loss, sdpa_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eager_gradients, sdpa_gradients, rtol=1e-4, atol=1e-6)
    eager_bf16_loss, eager_bf16_gradients = loss_and_gradients(autocast=True)
    torch.testing.assert_close(eager_bf16_loss, sdpa_bf16_loss, rtol=2e-2, atol=0)
    assert use_attention(model, "eager") == 0  # already there
    for module in model.modules():  # back to SDPA, then lean: eager's losses, gradients to their rounding
        if "Attention" in type(module).__name__ and hasattr(module, "config"):
            module.config._attn_implementation = "sdpa"
    assert use_attention(model, "lean") >= 2 and _attention_implementations(model) == {LEAN_IMPLEMENTATION}
    lean_loss, lean_gradients = loss_and_gradients(autocast=False)
    torch.testing.assert_close(lean_loss, eager_loss, rtol=0, atol=0)
    torch.testing.assert_close(lean_gradients, eager_gradients, rtol=1e-4, atol=1e-6)
    lean_bf16_loss, lean_bf16_gradients = loss_and_gradients(autocast=True)
    torch.testing.assert_close(lean_bf16_loss, eager_bf16_loss, rtol=0, atol=0)
    assert (lean_bf16_gradients - eager_bf16_gradients).norm() <= 2e-2 * eager_bf16_gradients.norm()


def test_the_choice_is_not_saved_with_the_model(tmp_path):
    from transformers import AutoModel

    model = tiny_splitmask()
    use_attention(model, "lean")
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
        assert use_attention(model, "eager") == len(blocks)
        assert not any(block.fused_attn for block in blocks)
        torch.testing.assert_close(model(images), fused, rtol=1e-4, atol=1e-5)


def test_a_composite_model_that_is_eager_at_the_top_can_still_be_rebuilt_from_its_config():
    """DINO's wrapper cannot dispatch SDPA, so its own config is eager. An earlier version also
    switched eager configs to "sdpa" for fp32 runs, and the FSDP gather, which rebuilds the model
    from its config, then failed ("BackboneForDINO does not support ... scaled_dot_product_attention")."""
    from test_dino import tiny_model

    model = tiny_model()
    before = model.config._attn_implementation
    assert use_attention(model, "lean") >= 1
    assert model.config._attn_implementation == "eager" and before == "eager"
    assert _attention_implementations(model) == {LEAN_IMPLEMENTATION}
    type(model)(model.config)  # what whole_model does under FSDP; raised before


class _AttentionModule(torch.nn.Module):
    """What transformers' attention functions read from their module: `training`."""


def _attention_inputs(dtype, bias_batch: int | None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    query, key, value = (torch.randn(2, 3, 17, 8, generator=generator).to(dtype).requires_grad_() for _ in range(3))
    bias = None if bias_batch is None else (0.5 * torch.randn(bias_batch, 3, 17, 17, generator=generator)).requires_grad_()
    return query, key, value, bias


def _attend(function, dtype, bias_batch, autocast: bool):
    query, key, value, bias = _attention_inputs(dtype, bias_batch)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        output, probabilities = function(_AttentionModule(), query, key, value, bias, scaling=8 ** -0.5)
    output.float().pow(2).sum().backward()
    gradients = [tensor.grad.float() for tensor in (query, key, value, bias) if tensor is not None]
    return output, probabilities, gradients


@pytest.mark.parametrize("bias_batch", [None, 1, 2])  # none; BEiT's shared bias; SplitMask's per-image gathered bias
def test_lean_attention_computes_eagers_values(bias_batch):
    """Forward bit for bit; fp32 gradients to float rounding; bf16 gradients to bf16 rounding (0.35 % measured)."""
    from transformers.models.vit.modeling_vit import eager_attention_forward

    from hf_ssl.training.attention import lean_attention_forward

    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        eager_output, eager_probabilities, eager_gradients = _attend(eager_attention_forward, dtype, bias_batch, False)
        lean_output, lean_probabilities, lean_gradients = _attend(lean_attention_forward, dtype, bias_batch, False)
        assert torch.equal(lean_output, eager_output) and torch.equal(lean_probabilities, eager_probabilities)
        assert lean_output.shape == (2, 17, 3, 8) and lean_output.is_contiguous()
        assert len(lean_gradients) == (3 if bias_batch is None else 4)
        for lean, eager in zip(lean_gradients, eager_gradients, strict=True):
            assert (lean - eager).norm() <= tolerance * eager.norm(), (dtype, (lean - eager).norm() / eager.norm())


def test_lean_attention_keeps_half_of_eagers_memory_for_the_backward_under_bf16():
    from transformers.models.vit.modeling_vit import eager_attention_forward

    from hf_ssl.training.attention import lean_attention_forward

    def kept_bytes(function) -> int:
        query, key, value, bias = _attention_inputs(torch.float32, 1)
        storages = {}

        def keep(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                # q, k, v as the projections under autocast give them: bf16 leaves of the graph
                function(_AttentionModule(), *(tensor.bfloat16() for tensor in (query, key, value)), bias, scaling=8 ** -0.5)
        return sum(storages.values())

    probabilities = 2 * 3 * 17 * 17
    eager, lean = kept_bytes(eager_attention_forward), kept_bytes(lean_attention_forward)
    assert eager - lean >= probabilities * 4  # eager's fp32 probabilities are gone (and its fp32 scores)
    assert lean <= 0.55 * eager


def test_lean_attention_applies_padding_masks_and_falls_back_to_eager_for_attention_dropout():
    """Text encoders (the dual encoder's) pass a padding mask: unregistered, transformers' mask builders return none."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertModel(config).eval()
    input_ids = torch.randint(1, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    padded = torch.ones(2, 7, dtype=torch.long)
    padded[1, 4:] = 0
    with torch.no_grad():
        unmasked = model(input_ids=input_ids).last_hidden_state
        use_attention(model, "eager")
        eager = model(input_ids=input_ids, attention_mask=padded).last_hidden_state
        model.config._attn_implementation = "sdpa"
        use_attention(model, "lean")
        lean = model(input_ids=input_ids, attention_mask=padded).last_hidden_state
    torch.testing.assert_close(lean, eager, rtol=0, atol=0)
    assert not torch.allclose(lean[1], unmasked[1], atol=1e-4)  # the padding mattered

    model = BertModel(BertConfig(**{**config.to_dict(), "attention_probs_dropout_prob": 0.5})).train()
    outputs = []
    for kernel in ("eager", "lean"):
        model.config._attn_implementation = "sdpa"
        use_attention(model, kernel)
        torch.manual_seed(1)
        outputs.append(model(input_ids=input_ids).last_hidden_state)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
