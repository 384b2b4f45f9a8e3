"""The accelerate configs shipped in recipes/accelerate/ parse, and name the distributed modes they claim."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).parents[1] / "recipes" / "accelerate"


@pytest.mark.parametrize("name, distributed_type, machines", [
    ("ddp_multi_gpu", DistributedType.MULTI_GPU, 1),
    ("fsdp_multi_gpu", DistributedType.FSDP, 1),
    ("multi_node", DistributedType.MULTI_GPU, 2),
])
def test_config_parses(name, distributed_type, machines):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == distributed_type and config.num_machines == machines
    if distributed_type == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
