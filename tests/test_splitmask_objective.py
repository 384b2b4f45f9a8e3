"""SplitMask's objective as the SplitMask paper states it: MIM(A) + MIM(B) + InfoNCE, each ablation row one
flag set, the projection head optional, and old checkpoints keeping the loss they were trained with."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from hf_ssl import BEiTConfig, SplitMaskConfig, ViTForSplitMask
from hf_ssl.losses import info_nce_loss

from tiny_models import TINY_BEIT, TINY_VIT, tiny_splitmask


def _images(batch=4, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _split(batch=4, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(16, generator=generator) < 8 for _ in range(batch)])


def _branch_losses(output):
    """MIM(A), MIM(B) recomputed from the output's logits and targets (view 1 hides A, view 2 hides B)."""
    logits_a, logits_b = output.logits.chunk(2)
    targets_a, targets_b = output.target_token_ids.chunk(2)
    mim_a = F.cross_entropy(logits_a.reshape(-1, logits_a.shape[-1]), targets_a.reshape(-1))
    mim_b = F.cross_entropy(logits_b.reshape(-1, logits_b.shape[-1]), targets_b.reshape(-1))
    return mim_a, mim_b


def test_loss_is_mim_a_plus_mim_b_plus_infonce():
    model = tiny_splitmask().eval()
    with torch.no_grad():
        output = model(_images(), bool_masked_pos=_split())
    mim_a, mim_b = _branch_losses(output)
    torch.testing.assert_close(output.mim_loss, (mim_a + mim_b) / 2)  # logged: the mean of the branches
    descriptor_a, descriptor_b = output.global_descriptors
    infonce = info_nce_loss(descriptor_a, descriptor_b, temperature=0.2)
    torch.testing.assert_close(output.contrastive_loss, infonce)
    torch.testing.assert_close(output.loss, mim_a + mim_b + infonce)


def test_loss_weights_scale_each_term():
    model = tiny_splitmask(mim_loss_weight=0.25, contrastive_loss_weight=3.0).eval()
    with torch.no_grad():
        output = model(_images(), bool_masked_pos=_split())
    mim_a, mim_b = _branch_losses(output)
    torch.testing.assert_close(output.loss, 0.25 * (mim_a + mim_b) + 3.0 * output.contrastive_loss)


def test_split_and_inpaint_without_matching():
    model = tiny_splitmask(use_contrastive_loss=False).eval()
    assert model.projection is None
    with torch.no_grad():
        output = model(_images(), bool_masked_pos=_split())
    assert output.contrastive_loss is None and output.global_descriptors is None
    mim_a, mim_b = _branch_losses(output)
    torch.testing.assert_close(output.loss, mim_a + mim_b)


def test_split_and_match_without_inpainting_needs_no_tokenizer():
    model = tiny_splitmask(fitted=False, use_mim_loss=False)
    output = model(_images(), bool_masked_pos=_split())
    assert output.mim_loss is None and output.logits is None and output.target_token_ids is None
    torch.testing.assert_close(output.loss, output.contrastive_loss)
    output.loss.backward()
    assert model.vit.layers[0].attention.q_proj.weight.grad.abs().sum() > 0
    assert model.token_classifier.weight.grad is None  # nothing inpaints
    # odd patch counts take the two-call path with the same switches
    odd = tiny_splitmask(fitted=False, use_mim_loss=False, image_size=24)
    assert torch.isfinite(odd(torch.randn(2, 3, 24, 24)).loss)


def test_projection_head_is_optional_and_off_by_default():
    assert SplitMaskConfig().use_projection_head is False
    plain = tiny_splitmask()
    assert plain.projection is None and not any(name.startswith("projection") for name in plain.state_dict())
    projected = tiny_splitmask(use_projection_head=True).eval()
    with torch.no_grad():
        output = projected(_images(), bool_masked_pos=_split())
    assert output.global_descriptors.shape == (2, 4, TINY_VIT["projection_dim"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(use_mim_loss=False, use_contrastive_loss=False), "use_mim_loss or use_contrastive_loss"),
        (dict(mim_loss_weight=-1.0), "mim_loss_weight must be >= 0"),
        (dict(objective="beit"), "BEiT is its own method"),
    ],
)
def test_invalid_objective_settings_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        SplitMaskConfig(**{**TINY_VIT, **overrides})


def test_configs_saved_before_the_loss_weights_keep_their_training_loss(tmp_path):
    """An hf-ssl <= 0.2 config has no mim_loss_weight / use_projection_head: it averaged the two MIM
    terms and projected the descriptors, and loads that way."""
    model = tiny_splitmask(use_projection_head=True, mim_loss_weight=0.5).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for name in ("mim_loss_weight", "use_projection_head", "use_mim_loss"):
        config.pop(name)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.mim_loss_weight == 0.5 and loaded.config.use_projection_head
    images, split = _images(), _split()
    with torch.no_grad():
        expected = model(images, bool_masked_pos=split)
        got = loaded(images, bool_masked_pos=split)
    torch.testing.assert_close(got.loss, expected.loss)
    torch.testing.assert_close(got.loss, expected.mim_loss + expected.contrastive_loss)
    # a BEiT config without the field keeps its single MIM term at weight 1
    beit = BEiTConfig.from_dict({**{k: v for k, v in BEiTConfig(**TINY_BEIT).to_dict().items() if k != "mim_loss_weight"}})
    assert beit.mim_loss_weight == 1.0


def test_beit_config_states_the_official_mask_count():
    assert BEiTConfig().num_masked_patches == 75  # --num_mask_patches 75 of 196 at 224 px
    assert BEiTConfig(image_size=224, patch_size=16).mask_ratio == 0.4
    assert BEiTConfig(**TINY_BEIT).num_masked_patches == round(16 * 75 / 196)


def test_from_pretrained_of_new_config_keeps_new_defaults(tmp_path):
    model = tiny_splitmask()
    model.save_pretrained(tmp_path)
    loaded = ViTForSplitMask.from_pretrained(tmp_path)
    assert loaded.config.mim_loss_weight == 1.0 and not loaded.config.use_projection_head


def test_token_figure_of_a_model_without_inpainting_leaves_the_prediction_blank():
    from hf_ssl.visualization import reconstruction_panels

    model = tiny_splitmask(use_mim_loss=False)  # fitted: the targets can still be drawn
    panels = reconstruction_panels(model, _images(2), seed=0)
    hidden = panels.hidden.unsqueeze(1).expand_as(panels.prediction)
    assert torch.count_nonzero(panels.prediction[hidden]) == 0
    assert torch.count_nonzero(panels.target[hidden]) > 0
    torch.testing.assert_close(panels.prediction[~hidden], panels.target[~hidden])
