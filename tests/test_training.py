"""Training machinery: schedules, parameter groups, arguments and validation, checkpoints.

The loop itself, driven by a method defined in a test module, is in test_method_example.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from hf_ssl.recipes import OptimizerDefaults, parameter_groups
from hf_ssl.schedules import apply_optimizer_schedules, cosine_schedule_with_warmup
from hf_ssl.training import (
    ConfigurationError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    parse_arguments,
    prune_checkpoints,
    resolve_arguments,
    save_checkpoint,
    validate_arguments,
)
from hf_ssl.training.checkpointing import TRAINER_STATE_NAME, truncate_training_log, write_manifest


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


def test_weight_decay_exempts_biases_norms_tokens_and_position_tables():
    """The official BEiT / MAE / SimMIM / DINO recipes exempt 3-D tokens too, which ">= 2-D" decays."""
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=16), add_pooling_layer=False, use_mask_token=True)
    vit.layers[0].mlp.fc1.bias.requires_grad_(False)
    decayed, exempt = parameter_groups(vit, weight_decay=0.05)
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.05, 0.0)
    assert (decayed["apply_weight_decay"], exempt["apply_weight_decay"]) == (True, False)
    names = {id(parameter): name for name, parameter in vit.named_parameters()}
    exempt_names = {names[id(parameter)] for parameter in exempt["params"]}
    decayed_names = {names[id(parameter)] for parameter in decayed["params"]}
    assert {"embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings"} <= exempt_names
    assert "layers.0.mlp.fc1.bias" not in exempt_names | decayed_names  # frozen: in no group
    assert decayed_names == {"embeddings.patch_embeddings.projection.weight", "layers.0.attention.q_proj.weight",
                             "layers.0.attention.k_proj.weight", "layers.0.attention.v_proj.weight",
                             "layers.0.attention.o_proj.weight", "layers.0.mlp.fc1.weight", "layers.0.mlp.fc2.weight"}


def test_timm_style_no_weight_decay_is_honoured():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model.no_weight_decay = lambda: {"1.weight"}
    decayed, exempt = parameter_groups(model, weight_decay=0.1)
    assert [tuple(p.shape) for p in decayed["params"]] == [(4, 3)]
    assert [tuple(p.shape) for p in exempt["params"]] == [(4,), (2, 4), (2,)]


def test_optimizer_schedules_respect_group_scales_and_exemptions():
    model = nn.Linear(3, 2)
    groups = parameter_groups(model, weight_decay=0.05)
    groups[0]["lr_scale"] = 0.5
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    apply_optimizer_schedules(optimizer, learning_rate=2e-3, weight_decay=0.3)
    assert [(group["lr"], group["weight_decay"]) for group in optimizer.param_groups] == [(1e-3, 0.3), (2e-3, 0.0)]


def test_linear_learning_rate_scaling():
    defaults = OptimizerDefaults(base_learning_rate=1.5e-3, reference_batch_size=2048)
    assert defaults.scaled_learning_rate(512) == pytest.approx(3.75e-4)


# ----- arguments


def test_yaml_config_with_command_line_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("method: mae\nmax_steps: 7\ntotal_batch_size: 8\nimage_size: 16\n")
    arguments, _ = parse_arguments(["--config", str(config), "--max_steps", "9"])
    assert (arguments.method, arguments.max_steps, arguments.total_batch_size, arguments.image_size) == ("mae", 9, 8, 16)
    config.write_text("max_step: 7\n")
    with pytest.raises(ConfigurationError, match="unknown argument.*max_step"):
        parse_arguments(["--config", str(config)])


def test_no_arguments_resolve_to_the_bundled_default_run():
    arguments = resolve_arguments(parse_arguments([])[0])
    assert arguments.method == "simclr"
    assert (arguments.model, arguments.image_size, arguments.max_steps) == ("resnet-micro", 48, 2000)
    assert arguments.report_protocols == ["knn", "linear", "finetune"] and arguments.dataset_name is None
    validate_arguments(arguments)
    # a method that masks ViT patches gets the small-image ViT; the plain digits are drawn at 32 px
    masked = resolve_arguments(parse_arguments(["--method", "splitmask", "--dataset_name", "digits"])[0])
    assert (masked.model, masked.image_size, masked.output_dir) == ("vit-micro", 32, "runs/splitmask-vit-micro-digits")
    other = resolve_arguments(parse_arguments(["--dataset_name", "my-org/images", "--max_steps", "10"])[0])
    assert other.report_protocols == [] and other.total_batch_size == 256
    with pytest.raises(ConfigurationError, match="--report_protocols zero_shot: choose from knn, linear, finetune"):
        validate_arguments(resolve_arguments(parse_arguments(["--report_protocols", "zero_shot"])[0]))
    assert arguments.report_baselines == ["random_init", "raw_pixels", "supervised"]
    with pytest.raises(ConfigurationError, match="--report_baselines linear: choose from random_init, raw_pixels, supervised"):
        validate_arguments(resolve_arguments(parse_arguments(["--report_baselines", "random_init", "linear"])[0]))
    # another checkpoint is a baseline too (an ImageNet model, say); a bare prefix names nothing
    validate_arguments(resolve_arguments(parse_arguments(["--report_baselines", "random_init", "pretrained:org/model"])[0]))
    with pytest.raises(ConfigurationError, match="--report_baselines pretrained:: choose from"):
        validate_arguments(resolve_arguments(parse_arguments(["--report_baselines", "pretrained:"])[0]))


@pytest.mark.parametrize(
    "flags, world_size, message",
    [
        (["--method", "nope"], 1, "--method 'nope' is not a registered method; available: .*splitmask"),
        (["--model", "vit-huge"], 1, "--model 'vit-huge' is not a preset .*vit-micro"),
        (["--model", "timm/no_such_net"], 1, "timm has no model 'no_such_net'"),
        (["--model", "/no/such/folder"], 1, "--model '/no/such/folder': no such folder$"),
        (["--method", "mae", "--model", "swin-micro"], 1, "--method mae needs a vit backbone"),
        (["--method", "splitmask", "--image_size", "30"], 1, r"--image_size 30: .*patch_size .*image_size \(30\)"),
        (["--method", "mae", "--image_size", "36"], 1, r"--image_size 36: .*image_size \(36\)"),
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
        arguments, method_arguments = parse_arguments(flags)
        validate_arguments(resolve_arguments(arguments), method_arguments, world_size=world_size)


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


# ----- the loop's monitors


class _ConstantBatches:
    """Endless identical batches with the interface the loop reads."""

    epoch = 0

    def __next__(self):
        return {"pixel_values": torch.ones(4, 3), "skipped_samples": torch.tensor(0)}

    def state_dict(self):
        return {}


class _CollapsingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, pixel_values):
        from transformers.modeling_outputs import ModelOutput

        loss = self.layer(pixel_values).pow(2).mean()
        return ModelOutput(loss=loss, embedding_std=torch.tensor(0.01))

    def get_backbone(self):
        return self.layer


def test_loop_warns_on_collapse_and_runs_the_periodic_evaluation(tmp_path, caplog):
    from hf_ssl.recipes import get_recipe
    from hf_ssl.training import LoopSettings, TrainingState, train

    accelerator = Accelerator(cpu=True)
    model = _CollapsingModel()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.0))
    model, optimizer = accelerator.prepare(model, optimizer)
    evaluated = []
    settings = LoopSettings(max_steps=4, max_grad_norm=None, logging_steps=2, save_steps=100, save_total_limit=1,
                            output_dir=str(tmp_path), eval_steps=3,
                            periodic_evaluation=lambda encoder: evaluated.append(encoder) or {"online_metric": 0.5})
    schedules = {"learning_rate": torch.full((4,), 1e-3), "weight_decay": torch.zeros(4)}
    with caplog.at_level("WARNING", logger="hf_ssl.training.loop"):
        state = train(accelerator, model, optimizer, get_recipe("mae"), _ConstantBatches(), schedules, settings,
                      TrainingState())
    assert state.step == 4
    assert [record.message.split(":")[0] for record in caplog.records] == ["Representation collapse at step 2"]
    assert len(evaluated) == 1 and isinstance(evaluated[0], nn.Linear)
    records = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert [(record["step"], "online_metric" in record) for record in records] == [(2, False), (3, True), (4, False)]


def test_mixed_precision_auto_follows_the_hardware(tmp_path, monkeypatch):
    from hf_ssl.training import runtime

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert runtime.cpu_has_native_bf16(str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not runtime.cpu_has_native_bf16(str(cpuinfo))
    assert not runtime.cpu_has_native_bf16(str(tmp_path / "missing"))
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.default_mixed_precision() == "bf16"
    assert resolve_arguments(parse_arguments([])[0]).mixed_precision == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert resolve_arguments(parse_arguments([])[0]).mixed_precision == "no"
    assert resolve_arguments(parse_arguments(["--mixed_precision", "bf16"])[0]).mixed_precision == "bf16"


def test_the_launchers_precision_wins_over_auto_and_an_explicit_one_must_agree(monkeypatch):
    """`accelerate launch --mixed_precision no` trained in bf16 on a bf16 host: hf-ssl's auto overrode it."""
    from hf_ssl.training import runtime

    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)

    def resolved(*flags):
        return resolve_arguments(parse_arguments(list(flags))[0]).mixed_precision

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert resolved() == "no"
    assert runtime.choose_mixed_precision("auto")[1].startswith("accelerate launch's")
    # accelerate exports "no" also when it was given no precision: an explicit hf-ssl value wins, and says so
    assert resolved("--mixed_precision", "bf16") == "bf16"
    assert "over accelerate launch's 'no'" in runtime.choose_mixed_precision("bf16")[1]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolved() == resolved("--mixed_precision", "fp16") == "fp16"
    with pytest.raises(ConfigurationError, match="--mixed_precision bf16 contradicts accelerate launch --mixed_precision fp16"):
        resolved("--mixed_precision", "bf16")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigurationError, match="hf-ssl trains in no / bf16 / fp16"):
        resolved()
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert runtime.choose_mixed_precision("auto") == ("bf16", "auto: this hardware computes bf16 natively")


def test_first_rows_of_a_dataset_and_of_a_stream():
    import datasets

    from hf_ssl.cli.pretrain import first_rows

    table = datasets.Dataset.from_dict({"value": list(range(10))})
    assert first_rows(table, 3)["value"] == [0, 1, 2] and len(first_rows(table, 30)) == 10
    assert [row["value"] for row in first_rows(table.to_iterable_dataset(), 4)] == [0, 1, 2, 3]
    with pytest.raises(ConfigurationError, match="--max_train_samples must be >= 1"):
        arguments, method_arguments = parse_arguments(["--max_train_samples", "0"])
        validate_arguments(resolve_arguments(arguments), method_arguments)


def test_runs_in_one_process_may_use_different_precisions(tmp_path):
    """A notebook (or this test session) trains in fp32, then with --mixed_precision bf16 (what auto
    picks on an AVX512-BF16 host): accelerate's one-per-process state must not refuse the second run."""
    from hf_ssl.cli import pretrain

    for precision in ("no", "bf16"):
        output_dir = tmp_path / precision
        code = pretrain.main([
            "--method", "simclr", "--model", "vit-micro", "--image_size", "32", "--max_steps", "1",
            "--total_batch_size", "4", "--dataloader_num_workers", "0", "--report_protocols", "none",
            "--report_to", "none", "--mixed_precision", precision, "--output_dir", str(output_dir),
        ])
        assert code == 0, precision
        assert json.loads((output_dir / "training_args.json").read_text())["mixed_precision"] == precision


_PAGE_FAULTS_OF_REPEATED_ALLOCATIONS = """
import resource, sys, torch
from hf_ssl.training.runtime import keep_freed_host_memory
kept = keep_freed_host_memory(torch.device(sys.argv[1])) if sys.argv[1] != "none" else False
for _ in range(3):  # 64 MiB: allocated, touched, freed, as a step's activations are
    torch.ones(1 << 24)  # (the heap settles after the first two)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(1 << 24)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(device: str) -> tuple[str, int]:
    """(whether the settings were made, minor page faults of 4 more 64 MiB allocations) in a fresh process."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", _PAGE_FAULTS_OF_REPEATED_ALLOCATIONS, device],
                            capture_output=True, text=True, timeout=120, env=env, check=True)
    kept, faults = result.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_freed_host_memory_is_reused_instead_of_page_faulted_again():
    pages = (1 << 26) // 4096  # of one 64 MiB tensor
    _, default_faults = _page_faults("none")
    assert default_faults > 3 * pages  # glibc maps and unmaps each one: every page faults again
    kept, faults = _page_faults("cpu")
    assert kept == "True" and faults < pages // 10


def test_the_allocator_is_left_alone_off_cpu_and_under_the_users_own_settings(monkeypatch):
    from hf_ssl.training.runtime import keep_freed_host_memory

    # Each returns before calling mallopt, so this process keeps glibc's defaults.
    assert not keep_freed_host_memory(torch.device("meta"))
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not keep_freed_host_memory(torch.device("cpu"))
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert not keep_freed_host_memory(torch.device("cpu"))
    assert parse_arguments([])[0].cpu_allocator_cache
    assert not parse_arguments(["--cpu_allocator_cache", "false"])[0].cpu_allocator_cache


_LAUNCHED_PROCESS_EXIT = """
import atexit, logging, sys
from hf_ssl.training.runtime import exit_launched_process
logging.basicConfig(level=logging.INFO)
atexit.register(lambda: print("finalized"))
print("saved")  # a pipe: block-buffered until flushed
logging.getLogger("run").info("logged")
sys.stderr.write("progress")
exit_launched_process(3)
"""


def test_a_launched_process_leaves_with_its_output_and_code_but_without_finalization():
    """Interpreter finalization (atexit, object teardown) is skipped: it is where gloo's threads can abort."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _LAUNCHED_PROCESS_EXIT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert result.stdout == "saved\n"
    assert "INFO:run:logged" in result.stderr and result.stderr.endswith("progress")
