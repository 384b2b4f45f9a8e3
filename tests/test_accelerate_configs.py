"""The accelerate configs shipped in recipes/accelerate/ parse, and name the distributed modes they claim."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).parents[1] / "recipes" / "accelerate"


@pytest.mark.parametrize("name, distributed_type, machines", [
    ("ddp_multi_gpu", DistributedType.MULTI_GPU, 1),
    ("multi_node", DistributedType.MULTI_GPU, 2),
])
def test_config_parses(name, distributed_type, machines):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == distributed_type and config.num_machines == machines


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_launches_are_refused_before_any_work(variable, monkeypatch, tmp_path, capsys):
    """hf-ssl's checkpoints hold whole (unsharded) states; a sharded run would fail at its first save."""
    from hf_ssl.cli import pretrain

    monkeypatch.setenv(variable, "true")
    assert pretrain.main(["--max_steps", "1", "--output_dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "sharded" in error[0] and "ddp_multi_gpu.yaml" in error[0]
    assert not (tmp_path / "run").exists()
