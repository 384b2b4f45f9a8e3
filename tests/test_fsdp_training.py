"""`accelerate launch --config_file recipes/accelerate/fsdp.yaml` trains, saves and resumes for real.

Two gloo processes on CPU run the trainer under torch's FSDP2 (one shard unit per ViT block), as
README shows. The run must match the same run under DDP (batch-level terms over both processes'
batches, the same whole-tensor checkpoints and Hub folder), and a resume from its checkpoint must
reproduce the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "trainers" / "pretrain.py"
FSDP_CONFIG = ROOT / "recipes" / "accelerate" / "fsdp.yaml"
MAX_STEPS = 4
# FSDP reduce-scatters where DDP all-reduces: the float sums differ in order, and Adam's normalised
# update turns that into up to ~lr-sized weight differences on near-zero gradients. Measured largest
# difference after 4 steps: DINO 5.7e-5 on an AVX2 EPYC, 1.14e-4 (a LayerNorm bias) on an AVX512 one.
WEIGHT_ATOL = 3e-4


def _launch(output_dir: Path, method: str, launch: list[str], *extra: str, expect_exit: int | None = 0,
            precision: str = "no") -> subprocess.CompletedProcess:
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    environment.pop("OMP_NUM_THREADS", None)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", precision, "--dynamo_backend", "no", str(SCRIPT),
        "--method", method, "--model", "vit-micro", "--image_size", "32", "--max_steps", str(MAX_STEPS),
        "--total_batch_size", "16", "--logging_steps", "1", "--save_steps", "2", "--dataloader_num_workers", "1",
        "--tokenizer_fit_batches", "2", "--report_to", "none", "--report_protocols", "none", "--output_dir", str(output_dir),
        # fp32 unless asked: most comparisons are of sharding, not of bf16 rounding (auto picks bf16 on
        # AVX512-BF16 hosts)
        "--mixed_precision", precision,
        *extra,
    ]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=400)
    # expect_exit None: any failure (torchrun reports a process's exit 2 as its own exit 1)
    assert (result.returncode != 0) if expect_exit is None else (result.returncode == expect_exit), result.stderr[-4000:]
    return result


def _losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output_dir / "training_log.jsonl").read_text().splitlines()]


def _assert_same_weights(first: Path, second: Path, atol: float) -> None:
    first_weights, second_weights = load_file(first), load_file(second)
    assert set(first_weights) == set(second_weights)
    for name, tensor in first_weights.items():
        torch.testing.assert_close(second_weights[name], tensor, rtol=0, atol=atol, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["splitmask", "dino"])
def test_fsdp_run_matches_ddp_and_resumes_exactly(method, tmp_path):
    """SplitMask (InfoNCE negatives from the other process) and DINO (EMA teacher, batch centre)."""
    ddp_run, fsdp_run, resumed_run = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    _launch(ddp_run, method, ["--multi_gpu"])
    _launch(fsdp_run, method, ["--config_file", str(FSDP_CONFIG)])

    # Same losses and weights as DDP, up to float summation order (reduce-scatter vs all-reduce).
    torch.testing.assert_close(_losses(fsdp_run), _losses(ddp_run), rtol=1e-4, atol=1e-5)
    _assert_same_weights(ddp_run / "model.safetensors", fsdp_run / "model.safetensors", atol=WEIGHT_ATOL)
    # The checkpoint's weights are whole tensors (gathered from the shards), the DDP checkpoint's;
    # its optimizer state is whole too, keyed by parameter name (DDP's by parameter index).
    checkpoint = Path("checkpoints") / f"checkpoint-{MAX_STEPS}"
    _assert_same_weights(ddp_run / checkpoint / "model.safetensors", fsdp_run / checkpoint / "model.safetensors", atol=WEIGHT_ATOL)
    moments = load_file(fsdp_run / checkpoint / "optimizer.safetensors")
    weights = load_file(fsdp_run / checkpoint / "model.safetensors")
    trained = [name for name in weights if f"state.state.{name}.exp_avg" in moments]
    assert len(trained) > 10
    assert all(moments[f"state.state.{name}.exp_avg"].shape == weights[name].shape for name in trained)

    # Resume from the step-2 checkpoint (as after a crash): the uninterrupted run's weights, exactly.
    shutil.copytree(fsdp_run, resumed_run)
    shutil.rmtree(resumed_run / "checkpoints" / f"checkpoint-{MAX_STEPS}")
    _launch(resumed_run, method, ["--config_file", str(FSDP_CONFIG)], "--resume_from_checkpoint", "latest")
    _assert_same_weights(fsdp_run / "model.safetensors", resumed_run / "model.safetensors", atol=0)
    assert _losses(resumed_run) == _losses(fsdp_run)
    if method == "splitmask":
        # The FSDP checkpoint resumed under DDP: refused in one line that names the change, not as damage.
        refused = _launch(resumed_run, method, ["--multi_gpu"], "--resume_from_checkpoint", "latest", expect_exit=None)
        lines = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 2 and all("written by an FSDP run, this run is a DDP" in line for line in lines), refused.stderr[-2000:]
        # Each process exits 2 with that line; the only traceback is torchrun's report of the exit.
        assert "hf_ssl/" not in refused.stderr and "damaged" not in refused.stderr and "exitcode: 2" in refused.stderr

    # What an FSDP run writes is an ordinary Hub-ready folder: AutoModel loads it, whole.
    from transformers import AutoModel

    import hf_ssl  # noqa: F401  (registers the hf-ssl model types)

    model = AutoModel.from_pretrained(fsdp_run)
    reference = AutoModel.from_pretrained(ddp_run)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, reference.state_dict()[name], rtol=0, atol=WEIGHT_ATOL, msg=name)
    assert AutoModel.from_pretrained(fsdp_run / "backbone").config.model_type == "vit"
    assert json.loads((fsdp_run / "training_args.json").read_text())["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(("method", "loss_rtol"), [("simclr", 1e-4), ("splitmask", 1e-3)])
def test_fsdp_bf16_computes_what_ddp_bf16_does(method, loss_rtol, tmp_path):
    """accelerate's FSDP2 bf16 alone computes every op in bf16 (SplitMask's 4th loss 13.625 vs DDP's
    13.538, measured) and refuses BatchNorm heads (SimCLR's projector: a bf16 weight beside fp32
    running statistics); hf-ssl runs the forward under autocast with fp32 reductions, as DDP does.

    SimCLR gathers in fp32 (batch norms): DDP's losses up to summation order. SplitMask gathers in
    bf16: its LayerNorm weights are rounded, measured within 2.5e-4 of DDP's losses. Matching DDP's
    bf16 losses also shows the FSDP run computed in bf16: SimCLR's fp32 losses differ by ~2.5e-3.
    """
    ddp_run, fsdp_run = tmp_path / "ddp", tmp_path / "fsdp"
    _launch(ddp_run, method, ["--multi_gpu"], precision="bf16")
    _launch(fsdp_run, method, ["--config_file", str(FSDP_CONFIG)], precision="bf16")
    torch.testing.assert_close(_losses(fsdp_run), _losses(ddp_run), rtol=loss_rtol, atol=1e-5)
    weights = load_file(fsdp_run / "model.safetensors")  # fp32 masters, as DDP's (batch counts are integers)
    assert all(tensor.dtype == torch.float32 for name, tensor in weights.items() if "num_batches_tracked" not in name)
    if method == "simclr":
        _assert_same_weights(ddp_run / "model.safetensors", fsdp_run / "model.safetensors", atol=WEIGHT_ATOL)


def test_models_with_0d_parameters_are_refused_with_one_line():
    """fully_shard splits dim 0: the dual encoder's scalar logit scale cannot be sharded (DDP trains it)."""
    from test_method_contract import METHODS, build_tiny

    from hf_ssl.training import ConfigurationError
    from hf_ssl.training.sharding import check_shardable

    with pytest.raises(ConfigurationError, match="logit_scale") as refusal:
        check_shardable(build_tiny("dual_encoder")[0])
    assert "\n" not in str(refusal.value) and "ddp_multi_gpu.yaml" in str(refusal.value)
    for method in set(METHODS) - {"dual_encoder"}:  # every other method shards
        check_shardable(build_tiny(method)[0])
