"""Fully sharded training (torch FSDP2, one shard unit per ViT block) keeps batch-level terms exact.

The model code itself, under torch's `fully_shard` on CPU with gloo: two processes, each holding
half of a global batch and half of every block's weights, must give the loss and the (gathered)
gradients of one process on the whole batch. SplitMask's InfoNCE takes its negatives from the
other process. The trainer under `accelerate launch --config_file recipes/accelerate/fsdp.yaml`
is tested in test_fsdp_training.py, the batch-level losses in test_distributed_losses.py.
"""

from __future__ import annotations

import datetime

import pytest
import torch

from process_groups import run_forked_workers
from tiny_models import tiny_splitmask

WORLD_SIZE = 2
GLOBAL_BATCH = 4


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    split = torch.zeros(GLOBAL_BATCH, 16, dtype=torch.bool)
    for row in range(GLOBAL_BATCH):
        split[row, torch.randperm(16, generator=generator)[:8]] = True
    return {"pixel_values": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator), "bool_masked_pos": split}


def _loss_and_gradients(model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = model(**inputs).loss
    loss.backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            gradient = parameter.grad
            gradients[name] = gradient.full_tensor() if hasattr(gradient, "full_tensor") else gradient
    return loss.detach(), gradients


def _worker(rank: int, world_size: int, store_path: str, result_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        model = tiny_splitmask().train()
        for layer in model.vit.layers:  # the ViT block is the shard unit
            fully_shard(layer)
        fully_shard(model)
        rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
        loss, gradients = _loss_and_gradients(model, {key: value[rows] for key, value in _inputs().items()})
        dist.all_reduce(loss)
        torch.save({"loss": loss / world_size, "gradients": gradients}, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fully_sharded_two_processes_equal_one_process(tmp_path):
    run_forked_workers(_worker, WORLD_SIZE, tmp_path)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]

    single_loss, single_gradients = _loss_and_gradients(tiny_splitmask().train(), _inputs())
    torch.testing.assert_close(results[0]["loss"], single_loss, rtol=1e-5, atol=1e-6)
    assert set(results[0]["gradients"]) == set(single_gradients)
    for name, expected in single_gradients.items():
        for rank in range(WORLD_SIZE):  # FSDP averages over processes: every process holds the same full gradient
            torch.testing.assert_close(results[rank]["gradients"][name], expected, rtol=1e-4, atol=1e-6, msg=name)
