"""The masked-image-modeling recipes against their official code: augmentation, weight-decay
exemptions, encoder, optimizer and schedule defaults."""

import math

import pytest
import torch
from torchvision.transforms import v2
from transformers import BeitModel, SwinModel, ViTModel

import hf_ssl
from hf_ssl.recipes import BuildContext, ScheduleContext, build_model, get_recipe
from hf_ssl.modeling.simmim.recipe import SimMIMArguments, simmim_learning_rates
from hf_ssl.transforms.masked import MaskedImageView
from run_folders import DIGITS_VIT_RUN

MASKED_METHODS = ("beit", "mae", "simmim", "splitmask")


def _tiny_context(method: str) -> BuildContext:
    recipe = get_recipe(method)
    backbone = hf_ssl.resolve_backbone("vit-micro", 32)
    return BuildContext(backbone=backbone, image_size=32, method_arguments=recipe.method_arguments_defaults())


def _pipeline_steps(method: str) -> list:
    transform = get_recipe(method).build_transform(_tiny_context(method))
    view = transform.image_transform
    assert isinstance(view, MaskedImageView)
    return list(view.pipeline.transforms)


def _step(steps, kind):
    found = [step for step in steps if isinstance(step, kind)]
    return found[0] if found else None


@pytest.mark.parametrize(
    "method, scale, interpolation, jitter",
    [
        ("mae", (0.2, 1.0), v2.InterpolationMode.BICUBIC, None),  # main_pretrain.py
        ("beit", (0.08, 1.0), v2.InterpolationMode.BICUBIC, 0.4),  # beit/datasets.py
        ("splitmask", (0.08, 1.0), v2.InterpolationMode.BICUBIC, 0.4),  # BEiT's, which SplitMask builds on
        ("simmim", (0.67, 1.0), v2.InterpolationMode.BILINEAR, None),  # data/data_simmim.py
    ],
)
def test_each_recipe_uses_its_published_augmentation(method, scale, interpolation, jitter):
    steps = _pipeline_steps(method)
    crop = _step(steps, v2.RandomResizedCrop)
    assert crop.scale == scale and crop.interpolation == interpolation
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert _step(steps, v2.RandomHorizontalFlip).p == 0.5
    color = _step(steps, v2.ColorJitter)
    if jitter is None:
        assert color is None
    else:
        assert color.brightness == color.contrast == color.saturation == (1 - jitter, 1 + jitter)
        assert color.hue is None
    normalize = _step(steps, v2.Normalize)
    assert normalize.mean == [0.485, 0.456, 0.406]


def test_masked_view_returns_a_normalised_image_of_the_size():
    from PIL import Image

    transform = get_recipe("mae").build_transform(_tiny_context("mae"))
    sample = transform({"image": Image.new("RGB", (50, 40), color=(255, 0, 0))})
    assert sample["pixel_values"].shape == (3, 32, 32) and sample["pixel_values"].dtype == torch.float32


def _exempt_names(method: str, model) -> set[str]:
    groups = get_recipe(method).parameter_groups(model, 0.05)
    exempt = {id(parameter) for group in groups if not group["apply_weight_decay"] for parameter in group["params"]}
    assert all(group["weight_decay"] == (0.05 if group["apply_weight_decay"] else 0.0) for group in groups)
    return {name for name, parameter in model.named_parameters() if id(parameter) in exempt}


def _decayed_names(method: str, model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad} - _exempt_names(method, model)


def test_mae_decays_every_matrix_and_token_like_timms_add_weight_decay():
    """main_pretrain.py: ``optim_factory.add_weight_decay(model, wd)`` with no skip list."""
    model = build_model("mae", "vit-micro", 32)
    decayed = _decayed_names("mae", model)
    assert {"vit.embeddings.cls_token", "decoder.mask_token"} <= decayed
    exempt = _exempt_names("mae", model)
    assert all(dict(model.named_parameters())[name].ndim < 2 for name in exempt)
    assert "vit.embeddings.position_embeddings" not in exempt | decayed  # frozen sin-cos table


@pytest.mark.parametrize("method", ["beit", "splitmask"])
def test_beit_family_exempts_pos_embed_and_cls_token_only(method):
    """beit/optim_factory.py: < 2-D, biases and no_weight_decay() = {pos_embed, cls_token}."""
    model = build_model(method, "vit-micro", 32, {"encoder_type": "beit", "use_absolute_position_embeddings": True})
    exempt, decayed = _exempt_names(method, model), _decayed_names(method, model)
    assert {"beit.embeddings.cls_token", "beit.embeddings.position_embeddings"} <= exempt
    assert "beit.shared_position_bias.relative_position_bias_table" in decayed
    assert "beit.layers.0.lambda_1" in exempt and "beit.layers.0.attention.q_proj.bias" in exempt
    if method == "beit":
        assert "mask_token" in decayed  # BEiT's mask token is (1, 1, D) and not in the skip list
    else:
        assert "decoder.position_embeddings" in exempt and "decoder.mask_token" in decayed


def test_simmim_exemptions_follow_each_encoders_no_weight_decay():
    vit = build_model("simmim", "vit-micro", 32, {"encoder_type": "beit"})
    exempt, decayed = _exempt_names("simmim", vit), _decayed_names("simmim", vit)
    assert "beit.embeddings.cls_token" in exempt
    # VisionTransformerForSimMIM adds nothing to {pos_embed, cls_token}: its mask token and the
    # shared relative position table are decayed.
    assert {"mask_token", "beit.shared_position_bias.relative_position_bias_table"} <= decayed
    swin = build_model("simmim", "swin-micro", 32)
    exempt = _exempt_names("simmim", swin)
    assert "swin.embeddings.mask_token" in exempt
    tables = [name for name, _ in swin.named_parameters() if name.endswith("relative_position_bias_table")]
    assert tables and set(tables) <= exempt


@pytest.mark.parametrize("method", ["beit", "splitmask", "simmim"])
def test_vit_recipes_build_the_published_beit_encoder(method):
    with torch.device("meta"):
        model = build_model(method, "vit-base", 224)
    config = model.config
    assert isinstance(model.get_backbone(), BeitModel)
    assert (config.encoder_type, config.drop_path_rate, config.layer_scale_init_value) == ("beit", 0.1, 0.1)
    assert config.use_shared_relative_position_bias and not config.use_absolute_position_embeddings
    assert not config.use_relative_position_bias
    with torch.device("meta"):
        large = build_model(method, "vit-large", 224)
    assert large.config.layer_scale_init_value == 1e-5  # "0.1 for base, 1e-5 for large"


def test_small_images_keep_the_plain_vit_unless_asked():
    """The bundled 32-px run's small-image setting (measured, see hf_ssl/recipes/vit_fields.py)."""
    for method in ("beit", "splitmask", "simmim"):
        assert type(build_model(method, "vit-micro", 32).get_backbone()) is ViTModel
        assert type(build_model(method, "vit-micro", 32, {"encoder_type": "beit"}).get_backbone()) is BeitModel
    with torch.device("meta"):
        assert type(build_model("beit", "vit-micro", 128).get_backbone()) is BeitModel


def test_plain_vit_stays_available_and_pretrained_vits_keep_their_architecture(tmp_path):
    model = build_model("beit", "vit-micro", 32, {"encoder_type": "vit"})
    assert type(model.get_backbone()) is ViTModel and model.config.drop_path_rate == 0.0
    ViTModel(hf_ssl.resolve_backbone("vit-micro", 32).transformers_config(), add_pooling_layer=False).save_pretrained(tmp_path)
    continued = build_model("splitmask", str(tmp_path), 32)
    assert type(continued.get_backbone()) is ViTModel
    swin = build_model("simmim", "swin-micro", 32)
    assert type(swin.get_backbone()) is SwinModel and swin.config.drop_path_rate == 0.0


def test_optimizer_defaults_are_the_published_ones():
    beit = get_recipe("beit").optimizer
    assert (beit.base_learning_rate, beit.reference_batch_size, beit.gradient_clip_norm) == (1.5e-3, 2048, 3.0)
    assert beit.warmup_fraction == 10 / 800 and beit.min_learning_rate_ratio == pytest.approx(1e-5 / 1.5e-3)
    splitmask = get_recipe("splitmask").optimizer
    assert splitmask.warmup_fraction == 10 / 300 and splitmask.base_learning_rate == 1.5e-3
    mae = get_recipe("mae").optimizer
    assert (mae.base_learning_rate, mae.reference_batch_size, mae.betas) == (1.5e-4, 256, (0.9, 0.95))
    assert (mae.warmup_fraction, mae.min_learning_rate_ratio, mae.gradient_clip_norm) == (40 / 800, 0.0, None)
    simmim = get_recipe("simmim").optimizer
    assert (simmim.base_learning_rate, simmim.reference_batch_size, simmim.warmup_fraction) == (1e-4, 512, 10 / 800)


def test_simmim_multistep_schedule_hand_computed():
    """lr_scheduler.py: warm-up from WARMUP_LR (5e-7 for 1e-4), x 0.1 from epoch 700 of 800."""
    values = simmim_learning_rates(1e-4, 800, 10, SimMIMArguments(), min_learning_rate_ratio=0.05)
    assert values[0].item() == pytest.approx(5e-7)
    assert values[5].item() == pytest.approx(5e-7 + (1e-4 - 5e-7) * 5 / 10)
    assert values[10].item() == pytest.approx(1e-4) and values[699].item() == pytest.approx(1e-4)
    assert values[700].item() == pytest.approx(1e-5) and values[-1].item() == pytest.approx(1e-5)


def test_simmim_cosine_schedule_counts_the_warmup_like_timm():
    arguments = SimMIMArguments(learning_rate_schedule="cosine")
    values = simmim_learning_rates(2e-4, 100, 10, arguments, min_learning_rate_ratio=0.05)
    minimum = 1e-5
    assert values[10].item() == pytest.approx(minimum + (2e-4 - minimum) * (1 + math.cos(math.pi * 10 / 100)) / 2)
    assert values[-1].item() == pytest.approx(minimum + (2e-4 - minimum) * (1 + math.cos(math.pi * 99 / 100)) / 2)
    with pytest.raises(ValueError, match="learning_rate_schedule"):
        SimMIMArguments(learning_rate_schedule="step")


def test_simmim_recipe_schedules_use_its_arguments():
    recipe = get_recipe("simmim")
    context = ScheduleContext(max_steps=80, warmup_steps=1, learning_rate=1.0, weight_decay=0.05,
                              method_arguments=SimMIMArguments())
    schedules = recipe.schedules(context)
    assert schedules["learning_rate"][69].item() == 1.0 and schedules["learning_rate"][70].item() == pytest.approx(0.1)
    assert torch.all(schedules["weight_decay"] == 0.05)


def test_beit_schedule_ends_at_min_lr():
    recipe = get_recipe("beit")
    schedules = recipe.schedules(ScheduleContext(max_steps=800, warmup_steps=10, learning_rate=1.5e-3, weight_decay=0.05))
    assert schedules["learning_rate"][0].item() == 0.0
    assert schedules["learning_rate"][10].item() == pytest.approx(1.5e-3)
    assert schedules["learning_rate"][-1].item() == pytest.approx(1e-5, rel=0.01)


# Steps of the bundled run's 1,200 that each recipe, with its published augmentation, needs to
# beat random init in kNN on the digits (SplitMask: tests/test_pretrain_script.py; SimMIM-Swin:
# tests/test_simmim.py).
LEARNING_STEPS = {"beit": 300, "mae": 300}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(LEARNING_STEPS))
def test_the_published_recipe_still_learns_on_the_bundled_digits(method, tmp_path):
    import json

    from hf_ssl.cli import pretrain

    steps, output_dir = LEARNING_STEPS[method], tmp_path / method
    assert pretrain.main(["--method", method, *DIGITS_VIT_RUN, "--max_steps", str(steps), "--save_steps", str(steps), "--logging_steps", "20",
                          "--report_to", "none", "--output_dir", str(output_dir)]) == 0
    losses = [json.loads(line)["loss"] for line in (output_dir / "training_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    knn = json.loads((output_dir / "eval_results.json").read_text())["knn"]
    assert knn["accuracy"] > knn["baselines"]["random_init"], knn
