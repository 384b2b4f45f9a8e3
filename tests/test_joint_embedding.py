"""The joint-embedding family (SimCLR, MoCo v3, BYOL, SimSiam, Barlow Twins, VICReg) on any backbone.

Every model: output shapes and fields, both views in ONE backbone call per network, save / load,
timm and transformers CNN backbones. Momentum models (MoCo v3, BYOL): no gradient into the momentum
encoder, which moves by EMA only. SimSiam: no gradient through the stop-gradient targets. Published
two-view pipelines. Slow: each method learns on the bundled digits through the real CLI, and the
benchmark suite (benchmarks/run.py) measures them next to lightly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, ConvNextConfig, ConvNextModel, ResNetConfig, ResNetModel

import hf_ssl
from hf_ssl.cli import pretrain
from hf_ssl.data import load_default_dataset
from hf_ssl.ema import momentum_schedule
from hf_ssl.heads import ProjectionHead
from hf_ssl.joint_embedding import find_patch_embedding, per_view
from hf_ssl.recipes import BuildContext, ScheduleContext, StepContext, build_model, get_recipe
from hf_ssl.transforms.two_views import TWO_VIEW_PIPELINES, two_view_transform
from run_folders import DIGITS_VIT_RUN

REPO = Path(__file__).resolve().parents[1]
METHODS = ("simclr", "moco_v3", "byol", "simsiam", "barlow_twins", "vicreg")
MOMENTUM_METHODS = ("moco_v3", "byol")
# Extra output fields per method: (name, shape given (B, E)) besides loss and the collapse metrics.
TENSOR_FIELDS = {
    "simclr": ("projections",),
    "moco_v3": ("queries", "momentum_keys"),
    "byol": ("predictions", "targets"),
    "simsiam": ("projections", "predictions"),
    "barlow_twins": ("projections",),
    "vicreg": ("projections",),
}
LOSS_TERMS = {
    "barlow_twins": ("invariance_loss", "redundancy_loss"),
    "vicreg": ("invariance_loss", "variance_loss", "covariance_loss"),
}
BATCH = 4
IMAGE_SIZE = 32


def views(batch_size: int = BATCH, image_size: int = IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, 2, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def tiny(method: str, backbone: str = "vit-micro", **overrides):
    torch.manual_seed(0)
    return build_model(method, backbone, IMAGE_SIZE, overrides)


def count_calls(module: torch.nn.Module) -> list[int]:
    """Batch sizes of every call of `module` from now on (images given positionally or as pixel_values=)."""
    calls: list[int] = []

    def record(_module, args, kwargs, _output):
        calls.append((args[0] if args else kwargs["pixel_values"]).shape[0])

    module.register_forward_hook(record, with_kwargs=True)
    return calls


@pytest.fixture(scope="module")
def cnn_folders(tmp_path_factory):
    """A transformers ConvNeXt and ResNet, built from configs and saved (random weights)."""
    folder = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(1)
    ConvNextModel(ConvNextConfig(num_stages=2, depths=[1, 1], hidden_sizes=[16, 32])).save_pretrained(folder / "convnext")
    ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")).save_pretrained(
        folder / "resnet"
    )
    return folder


# ----- model outputs and structure -----------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_outputs_have_the_loss_first_its_terms_the_collapse_metrics_and_view_major_embeddings(method):
    model = tiny(method).train()
    outputs = model(views())
    keys = list(outputs.keys())
    assert keys[0] == "loss" and outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    for name in (*LOSS_TERMS.get(method, ()), "embedding_std", "embedding_rank"):
        assert outputs[name].ndim == 0 and torch.isfinite(outputs[name]), name
    assert keys[1 : 1 + len(LOSS_TERMS.get(method, ()))] == list(LOSS_TERMS.get(method, ()))
    embedding_size = model.config.projection_dim
    for name in TENSOR_FIELDS[method]:
        assert outputs[name].shape == (2, BATCH, embedding_size), name
    assert type(outputs).__name__.endswith("Output")
    assert model.config.model_type == f"hf-ssl-{method}"


@pytest.mark.parametrize("method", METHODS)
def test_both_views_go_through_the_backbone_in_one_call(method):
    model = tiny(method).train()
    online_calls = count_calls(model.get_backbone())
    momentum_calls = count_calls(model.momentum_backbone.model) if method in MOMENTUM_METHODS else None
    model(views())
    assert online_calls == [2 * BATCH]
    if momentum_calls is not None:
        assert momentum_calls == [2 * BATCH]


@pytest.mark.parametrize("method", METHODS)
def test_view_order_is_view_major_and_matches_separate_backbone_calls(method):
    """The (2B) call equals one call per view for a backbone without batch norm (a ViT)."""
    model = tiny(method).eval()
    pixel_values = views()
    with torch.no_grad():
        joint = model.encode(pixel_values)  # (2, B, D)
        separate = torch.stack([model.backbone(pixel_values[:, 0]), model.backbone(pixel_values[:, 1])])
    torch.testing.assert_close(joint, separate, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("output_batch_norm", [False, True])
def test_heads_on_both_views_at_once_equal_one_call_per_view(output_batch_norm):
    """per_view's single pass: the outputs, input and weight gradients and batch-norm running
    statistics of separate per-view calls (float64, so only summation order differs)."""
    def build():
        torch.manual_seed(0)
        return ProjectionHead(5, 7, 3, num_layers=3, output_batch_norm=output_batch_norm).double().train()

    joint_head, separate_head = build(), build()
    features = torch.randn(2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    joint_inputs, separate_inputs = features.clone().requires_grad_(), features.clone().requires_grad_()
    joint = per_view(joint_head, joint_inputs)
    separate = torch.stack([separate_head(separate_inputs[0]), separate_head(separate_inputs[1])])
    weights = torch.randn(joint.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (joint * weights).sum().backward()
    (separate * weights).sum().backward()
    torch.testing.assert_close(joint, separate, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(joint_inputs.grad, separate_inputs.grad, rtol=1e-12, atol=1e-12)
    for (name, joint_parameter), separate_parameter in zip(joint_head.named_parameters(), separate_head.parameters()):
        torch.testing.assert_close(joint_parameter.grad, separate_parameter.grad, rtol=1e-12, atol=1e-12, msg=name)
    buffers = list(zip(joint_head.named_buffers(), separate_head.buffers()))
    assert any("running_mean" in name for (name, _), _ in buffers)
    for (name, joint_buffer), separate_buffer in buffers:
        torch.testing.assert_close(joint_buffer, separate_buffer, rtol=1e-12, atol=1e-12, msg=name)
    # A head that is not a Sequential is called once per view.
    calls = []
    head = torch.nn.Module()
    head.forward = lambda rows: calls.append(rows.shape) or rows * 2
    assert torch.equal(per_view(head, features), features * 2) and calls == [(6, 5), (6, 5)]


@pytest.mark.parametrize("method", METHODS)
def test_wrong_input_shapes_are_rejected(method):
    model = tiny(method)
    with pytest.raises(ValueError, match=r"pixel_values must be \(B, 2, C, H, W\)"):
        model(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(ValueError, match="B >= 2"):
        model(views(batch_size=1))


@pytest.mark.parametrize("method", METHODS)
def test_save_and_load_give_the_same_model(method, tmp_path):
    model = tiny(method)
    if method in MOMENTUM_METHODS:  # make the momentum encoder differ from the online one first
        with torch.no_grad():
            for parameter in model.backbone.parameters():
                parameter.add_(0.01)
        model.update_momentum_encoder(0.5)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert sorted(expected) == sorted(actual)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(loaded(views()).loss, model(views()).loss)


def test_config_validation_names_the_field():
    from hf_ssl.modeling.simclr import SimCLRConfig
    from hf_ssl.modeling.vicreg import VICRegConfig

    with pytest.raises(ValueError, match="temperature must be > 0"):
        SimCLRConfig(temperature=0.0)
    with pytest.raises(ValueError, match="projection_dim must be a positive int"):
        VICRegConfig(projection_dim=0)
    with pytest.raises(ValueError, match="variance_weight must be >= 0"):
        VICRegConfig(variance_weight=-1.0)
    with pytest.raises(ValueError, match="backbone_config is empty"):
        hf_ssl.modeling.simclr.BackboneForSimCLR(SimCLRConfig())


# ----- gradients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", MOMENTUM_METHODS)
def test_the_momentum_encoder_gets_no_gradient_and_moves_by_ema(method):
    model = tiny(method).train()
    momentum_parameters = [*model.momentum_backbone.parameters(), *model.momentum_projector.parameters()]
    online_parameters = [*model.backbone.parameters(), *model.projector.parameters()]
    assert all(not parameter.requires_grad for parameter in momentum_parameters)
    for momentum, online in zip(momentum_parameters, online_parameters):  # it starts as a copy
        torch.testing.assert_close(momentum, online, rtol=0, atol=0)

    model(views()).loss.backward()
    assert all(parameter.grad is None for parameter in momentum_parameters)
    optimizer = torch.optim.SGD([parameter for parameter in model.parameters() if parameter.requires_grad], lr=0.5)
    optimizer.step()
    before = [parameter.detach().clone() for parameter in momentum_parameters]
    model.update_momentum_encoder(0.9)
    moved = 0
    for old, new, online in zip(before, momentum_parameters, online_parameters):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online.detach())
        moved += int(not torch.equal(new, old))
    assert moved > 0


def test_simsiam_targets_get_no_gradient():
    """d loss / d z equals the gradient through the predictor alone: nothing flows into z as a target."""
    model = tiny("simsiam").train()
    outputs = model(views())
    through_everything = torch.autograd.grad(outputs.loss, outputs.projections, retain_graph=True)[0]
    loss_gradient_at_predictions = torch.autograd.grad(outputs.loss, outputs.predictions, retain_graph=True)[0]
    through_predictor = torch.autograd.grad(outputs.predictions, outputs.projections, loss_gradient_at_predictions)[0]
    torch.testing.assert_close(through_everything, through_predictor)
    assert through_predictor.abs().sum() > 0


@pytest.mark.parametrize("method", ("simclr", "barlow_twins", "vicreg", "simsiam"))
def test_every_trainable_parameter_gets_a_gradient(method):
    model = tiny(method).train()
    model(views()).loss.backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.requires_grad and parameter.grad is None]
    assert missing == []


@pytest.mark.parametrize("backbone", ["timm/resnet10t", "convnext"])
def test_moco_v3_freezes_the_vit_patch_projection_and_picks_its_resnet_setup_for_cnns(backbone, cnn_folders):
    vit = tiny("moco_v3")
    patch_embedding = find_patch_embedding(vit.get_backbone())
    assert all(not parameter.requires_grad for parameter in patch_embedding.parameters())
    assert (vit.config.projection_num_layers, vit.config.prediction_output_batch_norm, vit.config.temperature) == (3, True, 0.2)
    # a CNN (ConvNeXt's patchify stem is no vision transformer) gets MoCo_ResNet's heads and temperature
    cnn = tiny("moco_v3", backbone if backbone.startswith("timm/") else str(cnn_folders / backbone))
    assert (cnn.config.projection_num_layers, cnn.config.prediction_output_batch_norm, cnn.config.temperature) == (2, False, 1.0)
    assert not cnn.config.freeze_patch_embedding and all(parameter.requires_grad for parameter in cnn.backbone.parameters())


def test_freezing_a_patch_embedding_that_does_not_exist_is_an_error():
    with pytest.raises(ValueError, match="needs a backbone with a patch embedding"):
        tiny("simclr", "timm/resnet10t", freeze_patch_embedding=True)


# ----- any backbone ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["timm/resnet10t", "convnext", "resnet"])
@pytest.mark.parametrize("method", METHODS)
def test_cnn_backbones_from_timm_and_transformers_folders_train(method, backbone, cnn_folders, tmp_path):
    name = backbone if backbone.startswith("timm/") else str(cnn_folders / backbone)
    model = tiny(method, name).train()
    outputs = model(views())
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss)
    gradients = [parameter.grad for parameter in model.get_backbone().parameters() if parameter.requires_grad]
    assert any(gradient is not None and gradient.abs().sum() > 0 for gradient in gradients)
    if not backbone.startswith("timm/"):  # a folder with weights: the run starts from them, momentum copy included
        saved = AutoModel.from_pretrained(cnn_folders / backbone).state_dict()
        encoders = [model.get_backbone()] + ([model.momentum_backbone.model] if method in MOMENTUM_METHODS else [])
        for encoder in encoders:
            for key, tensor in saved.items():
                if "num_batches_tracked" not in key and "running" not in key:
                    torch.testing.assert_close(encoder.state_dict()[key], tensor, msg=key)
    model.eval().save_pretrained(tmp_path / "model")
    assert type(AutoModel.from_pretrained(tmp_path / "model")) is type(model)


# ----- recipes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "base_momentum"), [("moco_v3", 0.99), ("byol", 0.996)])
def test_momentum_recipes_schedule_the_published_momentum_and_apply_it_after_each_step(method, base_momentum):
    recipe = get_recipe(method)
    arguments = recipe.method_arguments_defaults()
    assert arguments.base_momentum == base_momentum
    schedules = recipe.schedules(ScheduleContext(max_steps=10, warmup_steps=1, learning_rate=1e-3, weight_decay=0.1,
                                                 method_arguments=arguments))
    torch.testing.assert_close(schedules["ema_momentum"], momentum_schedule(base_momentum, 10))
    assert schedules["ema_momentum"][0] == pytest.approx(base_momentum) and schedules["ema_momentum"][-1] > 0.999
    model = tiny(method)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            parameter.add_(1.0)
    before = next(model.momentum_backbone.parameters()).detach().clone()
    recipe.after_optimizer_step(model, StepContext(step=0, max_steps=10, values={"ema_momentum": 0.5}))
    torch.testing.assert_close(next(model.momentum_backbone.parameters()), before + 0.5 * 1.0)


@pytest.mark.parametrize("method", METHODS)
def test_recipes_use_published_heads_at_224_and_small_heads_below(method):
    recipe = get_recipe(method)
    published = recipe.config_class()
    small = build_model(method, "vit-micro", IMAGE_SIZE).config
    for name, value in recipe.small_image_fields.items():
        assert getattr(small, name) == value
        assert getattr(published, name) >= value
    assert recipe.supported_backbones == ("any",)
    context = BuildContext(backbone=hf_ssl.resolve_backbone("vit-micro", 224), image_size=224)
    with torch.device("meta"):
        config = recipe.build_model(context).config
    for name in recipe.small_image_fields:
        assert getattr(config, name) == getattr(published, name)


def test_recipe_transforms_make_two_views_per_row():
    row = {"image": load_default_dataset("train")[0]["image"]}
    for method in METHODS:
        recipe = get_recipe(method)
        context = BuildContext(backbone=hf_ssl.resolve_backbone("vit-micro", IMAGE_SIZE), image_size=IMAGE_SIZE)
        output = recipe.build_transform(context)(row)
        assert set(output) == {"pixel_values"} and output["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_a_bad_base_momentum_is_a_one_line_error(capsys):
    assert pretrain.main(["--method", "byol", "--base_momentum", "1.5", "--max_steps", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "--base_momentum must be in [0, 1]" in error and "\n" not in error


# ----- two-view pipelines ----------------------------------------------------------------------------


def test_published_pipelines_hold_the_official_values():
    simclr, byol, simsiam = (TWO_VIEW_PIPELINES[name] for name in ("simclr", "byol", "simsiam"))
    assert simclr.crop_scale == byol.crop_scale == (0.08, 1.0) and simsiam.crop_scale == (0.2, 1.0)
    assert simclr.first == simclr.second and simclr.first.color_jitter == (0.8, 0.8, 0.8, 0.2)
    assert (simclr.first.blur_probability, simclr.first.solarize_probability) == (0.5, 0.0)
    assert byol.first.color_jitter == byol.second.color_jitter == (0.4, 0.4, 0.2, 0.1)
    assert (byol.first.blur_probability, byol.second.blur_probability) == (1.0, 0.1)
    assert (byol.first.solarize_probability, byol.second.solarize_probability) == (0.0, 0.2)
    assert simsiam.first == simsiam.second and simsiam.first.color_jitter == (0.4, 0.4, 0.4, 0.1)
    for pipeline in (simclr, byol, simsiam):
        for view in (pipeline.first, pipeline.second):
            assert (view.color_jitter_probability, view.grayscale_probability) == (0.8, 0.2)


@pytest.mark.parametrize("name", sorted(TWO_VIEW_PIPELINES))
def test_two_view_transforms_are_seedable_and_random(name):
    image = load_default_dataset("train")[3]["image"]
    transform = two_view_transform(name, IMAGE_SIZE)
    torch.manual_seed(5)
    first = transform(image)["pixel_values"]
    torch.manual_seed(5)
    again = transform(image)["pixel_values"]
    assert first.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])


def test_two_view_transform_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name must be one of"):
        two_view_transform("dino", 32)
    with pytest.raises(ValueError, match="crop_scale must be"):
        two_view_transform("byol", 32, crop_scale=(0.5, 0.2))


# ----- training on the bundled digits (slow) ---------------------------------------------------------

# Steps per method for the slow test: enough for kNN to beat random init on the bundled digits
# (measured: see each recipe's bundled_run_defaults), short enough for ~a minute on 2 cores.
SLOW_TEST_STEPS = 150
# Barlow Twins and BYOL need longer (docs/small-image-defaults.md).
SLOW_TEST_STEPS_BY_METHOD = {"barlow_twins": 300, "byol": 600}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_on_the_bundled_digits(method, tmp_path, capsys):
    output_dir = tmp_path / method
    steps = SLOW_TEST_STEPS_BY_METHOD.get(method, SLOW_TEST_STEPS)
    code = pretrain.main(["--method", method, *DIGITS_VIT_RUN, "--max_steps", str(steps), "--logging_steps", "10",
                          "--save_steps", str(steps), "--report_to", "none", "--output_dir", str(output_dir)])
    assert code == 0
    records = [json.loads(line) for line in (output_dir / "training_log.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "loss" in record]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    knn = json.loads((output_dir / "eval_results.json").read_text())["knn"]
    assert knn["accuracy"] > knn["baselines"]["random_init"], knn
    assert "pre-trained" in capsys.readouterr().out
    if method in MOMENTUM_METHODS:
        assert records[-1]["ema_momentum"] > records[0]["ema_momentum"]
