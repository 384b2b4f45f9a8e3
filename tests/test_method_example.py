"""A method defined entirely in this test module plugs into the real training run untouched.

It uses every seam of the method contract: its own flags (`arguments_class`), two input columns
(an image and a number), a row transform that makes two views, any backbone (a preset, a local
transformers ConvNeXt folder, a timm name), a second network updated by EMA after each optimizer
step, scheduled values that are not the learning rate (EMA momentum for the hook, a temperature
passed to ``forward``), a gradient hook between backward and the optimizer step, and extra losses
and metrics that the loop logs. `hf_ssl.cli.pretrain.main` runs it in-process.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoModel, ConvNextConfig, ConvNextModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from hf_ssl.backbones import BackboneContractMixin, VisionBackbone
from hf_ssl.cli import pretrain
from hf_ssl.data import decode_image
from hf_ssl.recipes import BuildContext, MethodCard, OptimizerDefaults, Recipe, ScheduleContext, available_methods, register_recipe
from hf_ssl.schedules import cosine_schedule_with_warmup
from hf_ssl.transforms import build_transform


class ExampleConfig(PreTrainedConfig):
    model_type = "hf-ssl-example-test"

    backbone_config: dict = field(default_factory=dict)
    projection_dim: int = 16


@dataclass
class ExampleOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    invariance_loss: torch.FloatTensor | None = None
    brightness_loss: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None


class BackboneForExample(BackboneContractMixin, PreTrainedModel):
    """Student (backbone + projector + brightness head) against an EMA teacher of backbone + projector."""

    config_class = ExampleConfig
    main_input_name = "views"

    def __init__(self, config: ExampleConfig):
        super().__init__(config)
        self.student = VisionBackbone(config.backbone_config)
        self.projector = nn.Linear(self.student.feature_dimension, config.projection_dim)
        self.brightness_head = nn.Linear(self.student.feature_dimension, 1)
        self.teacher = copy.deepcopy(nn.ModuleDict({"backbone": self.student, "projector": self.projector}))
        self.teacher.requires_grad_(False)
        self.post_init()

    def _init_weights(self, module):
        """Leave the backbone's own initialisation (timm / transformers) alone."""

    def get_backbone(self):
        return self.student.model

    def forward(self, views: torch.Tensor, brightness: torch.Tensor, temperature: float = 1.0) -> ExampleOutput:
        """views: (B, 2, C, H, W); brightness: (B,)."""
        student_features = self.student(views[:, 0])  # (B, D)
        student = F.normalize(self.projector(student_features), dim=-1)
        with torch.no_grad():
            teacher = F.normalize(self.teacher["projector"](self.teacher["backbone"](views[:, 1])), dim=-1)
        invariance_loss = (2 - 2 * (student * teacher).sum(-1) / temperature).mean()
        brightness_loss = F.mse_loss(self.brightness_head(student_features).squeeze(-1), brightness)
        return ExampleOutput(
            loss=invariance_loss + brightness_loss,
            invariance_loss=invariance_loss,
            brightness_loss=brightness_loss,
            embedding_std=student.detach().std(dim=0).mean(),
        )

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        for teacher, student in zip(self.teacher.parameters(), [*self.student.parameters(), *self.projector.parameters()]):
            teacher.mul_(momentum).add_(student.detach(), alpha=1 - momentum)


@dataclass
class ExampleArguments:
    brightness_column: str = field(default="brightness", metadata={"help": "Column with each image's brightness."})
    initial_momentum: float = field(default=0.9, metadata={"help": "EMA momentum at the first step (-> 1)."})


class TwoViewsAndBrightness:
    def __init__(self, image_size: int):
        self.view = build_transform("light", image_size)

    def __call__(self, row: dict) -> dict[str, torch.Tensor]:
        image = decode_image(row["image"])
        return {
            "views": torch.stack([self.view(image)["pixel_values"], self.view(image)["pixel_values"]]),
            "brightness": torch.tensor(float(row["brightness"])),
        }


class ExampleRecipe(Recipe):
    name = "example-test"
    description = "test method: EMA teacher, two columns, scheduled temperature"
    card = MethodCard(title="Example", description="A method defined in a test.", tags=("example",))
    registrations = ((ExampleConfig, BackboneForExample, ("AutoModel",)),)
    arguments_class = ExampleArguments
    optimizer = OptimizerDefaults(base_learning_rate=1e-3, reference_batch_size=8, warmup_fraction=0.25)
    default_model = "vit-micro"
    default_image_size = 32
    supported_backbones = ("any",)
    forward_schedule_inputs = ("temperature",)

    def __init__(self):
        self.calls = {"after_backward": [], "after_optimizer_step": []}
        self.initial_brightness_bias = None

    def columns(self, arguments, method_arguments):
        return {"image": arguments.image_column, "brightness": method_arguments.brightness_column}

    def build_transform(self, context: BuildContext):
        return TwoViewsAndBrightness(context.image_size)

    def build_model(self, context: BuildContext):
        model = BackboneForExample(ExampleConfig(backbone_config=context.backbone.nested()))
        self.initial_brightness_bias = model.brightness_head.bias.detach().clone()
        return model

    def schedules(self, context: ScheduleContext):
        schedules = super().schedules(context)
        momentum = context.method_arguments.initial_momentum
        schedules["ema_momentum"] = cosine_schedule_with_warmup(momentum, 1.0, context.max_steps)
        schedules["temperature"] = torch.linspace(1.0, 0.5, context.max_steps, dtype=torch.float64)
        return schedules

    def after_backward(self, model, step):
        model.brightness_head.bias.grad = None  # e.g. DINO freezing its last layer for a while
        self.calls["after_backward"].append(step.step)

    def after_optimizer_step(self, model, step):
        model.update_teacher(step.values["ema_momentum"])
        self.calls["after_optimizer_step"].append(step.values["ema_momentum"])


RECIPE = register_recipe(ExampleRecipe()) if "example-test" not in available_methods() else None


@pytest.fixture(scope="module")
def two_column_parquet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    generator = np.random.default_rng(0)
    images, brightness = [], []
    for _ in range(24):
        level = generator.uniform(0.1, 0.9)
        array = np.clip(generator.normal(level * 255, 30, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(array))
        brightness.append(level)
    dataset = datasets.Dataset.from_dict({"image": images, "brightness": brightness},
                                         features=datasets.Features({"image": datasets.Image(), "brightness": datasets.Value("float32")}))
    path = folder / "train.parquet"
    dataset.to_parquet(str(path))
    return path


def _run(tmp_path, data_file, model: str, extra: list[str] = ()):
    output_dir = tmp_path / "run"
    RECIPE.calls = {"after_backward": [], "after_optimizer_step": []}
    code = pretrain.main([
        "--method", "example-test", "--model", model, "--image_size", "32",
        "--dataset_name", "parquet", "--data_files", str(data_file), "--max_steps", "4", "--total_batch_size", "8",
        "--logging_steps", "1", "--save_steps", "4", "--dataloader_num_workers", "0", "--report_to", "none",
        "--initial_momentum", "0.8", "--output_dir", str(output_dir), *extra,
    ])
    return code, output_dir


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vit-micro", "convnext-folder", "timm/resnet10t"])
def test_a_method_defined_in_a_test_uses_every_seam(tmp_path, two_column_parquet, backbone):
    if backbone == "convnext-folder":
        folder = tmp_path / "convnext"
        torch.manual_seed(1)
        ConvNextModel(ConvNextConfig(num_stages=2, depths=[1, 1], hidden_sizes=[16, 32])).save_pretrained(folder)
        backbone = str(folder)
    code, output_dir = _run(tmp_path, two_column_parquet, backbone, ["--eval_steps", "2"])
    assert code == 0
    records = [json.loads(line) for line in (output_dir / "training_log.jsonl").read_text().splitlines()]
    online = [record for record in records if "online_knn_accuracy" in record]
    assert [record["step"] for record in online] == [2, 4]  # the bundled digits, scored by the live encoder
    assert all(0.0 <= record["online_knn_accuracy"] <= 1.0 for record in online)
    log = [record for record in records if "loss" in record]
    assert [record["step"] for record in log] == [1, 2, 3, 4]
    for record in log:  # every scalar of the output, and every schedule, is logged
        for key in ("loss", "invariance_loss", "brightness_loss", "embedding_std", "learning_rate", "weight_decay",
                    "ema_momentum", "temperature"):
            assert math.isfinite(record[key]), key
    assert [record["temperature"] for record in log] == pytest.approx(torch.linspace(1.0, 0.5, 4).tolist())
    assert RECIPE.calls["after_backward"] == [0, 1, 2, 3]
    assert RECIPE.calls["after_optimizer_step"] == pytest.approx(cosine_schedule_with_warmup(0.8, 1.0, 4).tolist())

    model = AutoModel.from_pretrained(output_dir)
    assert type(model) is BackboneForExample
    # the gradient hook kept this parameter at its initial value (it is not weight-decayed either)
    torch.testing.assert_close(model.brightness_head.bias, RECIPE.initial_brightness_bias)
    # the EMA teacher moved, and it is not the student
    student = torch.cat([parameter.flatten() for parameter in model.student.parameters()])
    teacher = torch.cat([parameter.flatten() for parameter in model.teacher["backbone"].parameters()])
    assert not torch.equal(student, teacher)
    # the exported backbone is the plain module, loadable without the method
    exported = AutoModel.from_pretrained(output_dir / "backbone")
    assert type(exported).__name__ in ("ViTModel", "ConvNextModel", "TimmWrapperModel")
    arguments = json.loads((output_dir / "training_args.json").read_text())
    assert arguments["method_arguments"] == {"brightness_column": "brightness", "initial_momentum": 0.8}
    assert arguments["columns"] == {"image": "image", "brightness": "brightness"}


@pytest.mark.slow
def test_a_checkpoint_backbone_starts_from_its_weights_unless_from_scratch(tmp_path, two_column_parquet):
    folder = tmp_path / "convnext"
    torch.manual_seed(1)
    pretrained = ConvNextModel(ConvNextConfig(num_stages=2, depths=[1, 1], hidden_sizes=[16, 32]))
    pretrained.save_pretrained(folder)
    model = RECIPE.build_model(BuildContext(backbone=__import__("hf_ssl").resolve_backbone(str(folder), 32), image_size=32))
    assert not torch.equal(model.get_backbone().embeddings.patch_embeddings.weight, pretrained.embeddings.patch_embeddings.weight)
    from hf_ssl.recipes import build_model

    loaded = build_model("example-test", str(folder), 32)
    torch.testing.assert_close(loaded.get_backbone().embeddings.patch_embeddings.weight, pretrained.embeddings.patch_embeddings.weight)
    scratch = build_model("example-test", str(folder), 32, from_scratch=True)
    assert not torch.equal(scratch.get_backbone().embeddings.patch_embeddings.weight, pretrained.embeddings.patch_embeddings.weight)


def test_method_flags_are_listed_by_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(["--method", "example-test", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--brightness_column" in help_text and "--initial_momentum" in help_text and "--max_steps" in help_text


def test_a_missing_column_of_the_method_is_an_error_before_any_work(tmp_path, two_column_parquet, capsys):
    code, _ = _run(tmp_path, two_column_parquet, "vit-micro", ["--brightness_column", "luminance"])
    assert code == 2
    assert "'luminance' is not a column" in capsys.readouterr().err
