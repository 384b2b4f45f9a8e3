"""The accelerate configs shipped in recipes/accelerate/ parse, and name the distributed modes they claim."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).parents[1] / "recipes" / "accelerate"


@pytest.mark.parametrize("name, distributed_type, machines", [
    ("ddp_multi_gpu", DistributedType.MULTI_GPU, 1),
    ("multi_node", DistributedType.MULTI_GPU, 2),
    ("fsdp", DistributedType.FSDP, 1),
])
def test_config_parses(name, distributed_type, machines):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == distributed_type and config.num_machines == machines


def test_fsdp_config_is_fsdp2_full_shard_wrapping_blocks():
    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    # no class names: the wrap units are each model's `_no_split_modules` (its blocks), whatever the method
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and "fsdp_transformer_layer_cls_to_wrap" not in fsdp


@pytest.mark.parametrize("variable, names", [
    ("ACCELERATE_USE_DEEPSPEED", ("DeepSpeed", "fsdp.yaml")),
    ("ACCELERATE_USE_MEGATRON_LM", ("Megatron-LM", "fsdp.yaml")),
    ("ACCELERATE_USE_FSDP", ("fsdp_version: 2",)),  # FSDP1 (FSDP_VERSION unset or 1)
])
def test_unsupported_launches_are_refused_before_any_work(variable, names, monkeypatch, tmp_path, capsys):
    """hf-ssl's checkpoints hold whole states, gathered from DDP and FSDP2 runs only."""
    from hf_ssl.cli import pretrain

    monkeypatch.setenv(variable, "true")
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    assert pretrain.main(["--max_steps", "1", "--output_dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and all(name in error[0] for name in names), error
    assert not (tmp_path / "run").exists()
