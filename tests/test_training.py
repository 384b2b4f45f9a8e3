"""Training machinery: schedules, parameter groups, arguments and validation, checkpoints,
and the loop driven by a method registered here (adding a method needs no loop edits)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from hf_ssl.recipes import OptimizerDefaults, Recipe, available_methods, register_recipe
from hf_ssl.training import (
    ConfigurationError,
    cosine_schedule_with_warmup,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    parameter_groups,
    parse_arguments,
    prune_checkpoints,
    resolve_arguments,
    save_checkpoint,
    scaled_learning_rate,
    validate_arguments,
)
from hf_ssl.training.checkpointing import TRAINER_STATE_NAME, truncate_training_log, write_manifest


# ----- a method defined only in this test module


class TinyMAEForTests(ViTMAEForPreTraining):
    """transformers' MAE with the hf-ssl backbone contract, for driving the loop."""

    def get_backbone(self):
        return self.vit

    def export_backbone(self, save_directory):
        self.vit.save_pretrained(save_directory)
        return Path(save_directory)


def build_tiny_mae(model_preset: str, image_size: int, overrides: dict) -> TinyMAEForTests:
    config = ViTMAEConfig(
        image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=64, **overrides,
    )
    return TinyMAEForTests(config)


if "test-mae" not in available_methods():
    register_recipe(
        Recipe(
            name="test-mae",
            description="tiny MAE used by the tests",
            build_model=build_tiny_mae,
            augmentation="light",
            optimizer=OptimizerDefaults(base_learning_rate=1e-3, reference_batch_size=16, warmup_fraction=0.25),
            default_model="vit-micro",
            default_image_size=32,
        )
    )


# ----- schedules and optimizer


def test_cosine_schedule_hand_values():
    # warm-up 0 -> 1 over 2 steps: [0, 0.5]; cosine over 2 steps from 1 to 0: [1, (1 + cos(pi/2)) / 2 = 0.5].
    schedule = cosine_schedule_with_warmup(1.0, 0.0, total_steps=4, warmup_steps=2)
    torch.testing.assert_close(schedule, torch.tensor([0.0, 0.5, 1.0, 0.5], dtype=torch.float64))
    no_warmup = cosine_schedule_with_warmup(2.0, 1.0, total_steps=3)
    # 1 + (2 - 1) * (1 + cos(pi * j / 3)) / 2 for j = 0, 1, 2
    expected = [1 + (1 + math.cos(math.pi * j / 3)) / 2 for j in range(3)]
    torch.testing.assert_close(no_warmup, torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule_with_warmup(1.0, 0.0, total_steps=3, warmup_steps=4)


def test_weight_decay_only_on_matrices():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)
    decayed, not_decayed = parameter_groups(model, weight_decay=0.05)
    assert decayed["weight_decay"] == 0.05 and not_decayed["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decayed["params"]] == [(4, 3), (2, 4)]
    assert [tuple(p.shape) for p in not_decayed["params"]] == [(4,), (4,), (4,)]  # bias, norm weight, norm bias


def test_linear_learning_rate_scaling():
    defaults = OptimizerDefaults(base_learning_rate=1.5e-3, reference_batch_size=2048)
    assert scaled_learning_rate(defaults, 512) == pytest.approx(3.75e-4)


# ----- arguments


def test_yaml_config_with_command_line_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("method: test-mae\nmax_steps: 7\ntotal_batch_size: 8\nimage_size: 16\n")
    arguments = parse_arguments(["--config", str(config), "--max_steps", "9"])
    assert (arguments.method, arguments.max_steps, arguments.total_batch_size, arguments.image_size) == ("test-mae", 9, 8, 16)
    config.write_text("max_step: 7\n")
    with pytest.raises(ConfigurationError, match="unknown argument.*max_step"):
        parse_arguments(["--config", str(config)])


def test_no_arguments_resolve_to_the_bundled_default_run():
    arguments = resolve_arguments(parse_arguments([]))
    assert arguments.method == "splitmask"
    assert (arguments.model, arguments.image_size, arguments.max_steps) == ("vit-micro", 32, 1200)
    assert arguments.knn_evaluation is True and arguments.dataset_name is None
    validate_arguments(arguments)
    other = resolve_arguments(parse_arguments(["--dataset_name", "my-org/images", "--max_steps", "10"]))
    assert other.knn_evaluation is False and other.total_batch_size == 256


@pytest.mark.parametrize(
    "flags, world_size, message",
    [
        (["--method", "nope"], 1, "--method 'nope' is not a registered method; available: .*splitmask"),
        (["--model", "vit-huge"], 1, "--model: Unknown model preset 'vit-huge'"),
        (["--image_size", "30"], 1, r"--image_size 30: .*patch_size .*image_size \(30\)"),
        (["--method", "test-mae", "--image_size", "36"], 1, r"--image_size 36 must be a multiple of the model's patch_size \(8\)"),
        (["--image_size", "0"], 1, "--image_size must be a positive integer"),
        (["--total_batch_size", "63"], 2, r"--total_batch_size 63 must be a positive multiple of processes \(2\)"),
        (["--total_batch_size", "64", "--gradient_accumulation_steps", "3"], 1, "gradient_accumulation_steps"),
        (["--save_total_limit", "0"], 1, "--save_total_limit must be >= 1"),
        (["--report_to", "tensorbord"], 1, "--report_to 'tensorbord'"),
        (["--resume_from_checkpoint", "/nonexistent/checkpoint-3"], 1, "no such checkpoint folder"),
    ],
)
def test_validation_messages(flags, world_size, message):
    with pytest.raises(ConfigurationError, match=message):
        validate_arguments(resolve_arguments(parse_arguments(flags)), world_size=world_size)


# ----- checkpoints


def _fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    path = root / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / TRAINER_STATE_NAME).write_text("{}")
        write_manifest(path)
    return path


def test_latest_and_pruning_ignore_incomplete_folders(tmp_path):
    for step in (5, 10, 15):
        _fake_checkpoint(tmp_path, step)
    _fake_checkpoint(tmp_path, 20, complete=False)  # no trainer_state: a save that never finished
    (tmp_path / "checkpoints" / ".tmp-checkpoint-25").mkdir()
    assert latest_checkpoint(tmp_path).name == "checkpoint-15"
    removed = prune_checkpoints(tmp_path, save_total_limit=2)
    assert [path.name for path in removed] == ["checkpoint-5"]
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]
    assert not (tmp_path / "checkpoints" / ".tmp-checkpoint-25").exists()
    prune_checkpoints(tmp_path, save_total_limit=1)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-15"]
    with pytest.raises(ValueError, match="save_total_limit must be >= 1"):
        prune_checkpoints(tmp_path, save_total_limit=0)


def test_truncate_training_log(tmp_path):
    log = tmp_path / "training_log.jsonl"
    log.write_text("".join(json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in range(1, 6)))
    truncate_training_log(log, last_step=3)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]


def test_save_and_load_checkpoint_round_trip(tmp_path):
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    saved_weight = model.weight.detach().clone()
    path = save_checkpoint(
        accelerator, tmp_path, 3, {"step": 3, "world_size": 1}, {"position": 12}, save_total_limit=1
    )
    assert path.name == "checkpoint-3" and not list((tmp_path / "checkpoints").glob(".tmp*"))
    expected_random = torch.rand(2)
    with torch.no_grad():
        model.weight.zero_()
    torch.rand(5)
    trainer_state, data_state = load_checkpoint(accelerator, path)
    assert trainer_state == {"step": 3, "world_size": 1} and data_state == {"position": 12}
    torch.testing.assert_close(model.weight, saved_weight)
    torch.testing.assert_close(torch.rand(2), expected_random)  # RNG restored
    save_checkpoint(accelerator, tmp_path, 6, {"step": 6, "world_size": 1}, {"position": 24}, save_total_limit=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-6"]


# ----- the whole script in-process with a method it has never heard of


@pytest.mark.slow
def test_pretrain_main_runs_a_recipe_registered_elsewhere(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_script", Path(__file__).parents[1] / "trainers" / "pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    output_dir = tmp_path / "run"
    code = pretrain.main([
        "--method", "test-mae", "--max_steps", "6", "--total_batch_size", "16", "--gradient_accumulation_steps", "2",
        "--logging_steps", "1", "--save_steps", "3", "--learning_rate", "2e-3", "--dataloader_num_workers", "0", "--report_to", "tensorboard",
        "--output_dir", str(output_dir), "--knn_evaluation", "false",
    ])
    assert code == 0
    log = [json.loads(line) for line in (output_dir / "training_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(record["loss"]) for record in log)
    assert log[-1]["num_images_seen"] == 6 * 16
    # warm-up: the recipe's 25% of 6 steps = 1.5 -> 2 steps (0, 1e-3), then the peak 2e-3
    assert [record["learning_rate"] for record in log[:3]] == pytest.approx([0.0, 1e-3, 2e-3])
    arguments = json.loads((output_dir / "training_args.json").read_text())
    assert arguments["method"] == "test-mae" and arguments["world_size"] == 1 and arguments["total_batch_size"] == 16
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-3", "checkpoint-6"]
    assert list((output_dir / "logs").rglob("events.out.tfevents*"))
    assert (output_dir / "backbone" / "preprocessor_config.json").is_file()
    # a missing column is a configuration error, reported before training
    code = pretrain.main(["--method", "test-mae", "--image_column", "pixels", "--output_dir", str(tmp_path / "bad")])
    assert code == 2
    assert "--image_column 'pixels' is not a column" in capsys.readouterr().err
