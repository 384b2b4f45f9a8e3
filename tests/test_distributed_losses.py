"""Batch-level losses in a real 2-process gloo run against one process on the same global batch.

Each process takes its rows of a global batch, maps them through a tiny linear layer shared by
both processes (same weights), computes the loss and backpropagates it. Parameter gradients
are averaged over the processes as DDP does; the test then requires the loss, the gradient of
every input row and the averaged parameter gradients to equal one process's on the whole batch
(float64, tight tolerances). A world-size factor or a missing gather fails by a factor of 2.
The same cases run a second time with the shared parameters fully sharded (torch FSDP2's
``fully_shard``: each process holds half of each, gathered for the forward, gradients
reduce-scattered), which is how `recipes/accelerate/fsdp.yaml` trains.
"""

from __future__ import annotations

import datetime

import pytest
import torch

from hf_ssl.losses import (
    barlow_twins_loss,
    clip_loss,
    dino_loss,
    moco_v3_loss,
    nt_xent_loss,
    siglip_loss,
    sinkhorn_knopp_targets,
    update_dino_center,
    vicreg_loss,
)
from process_groups import run_forked_workers

WORLD_SIZE = 2
GLOBAL_BATCH = 8
FEATURES = 5
EMBEDDING = 6
CROPS = 6  # DINO: 2 global + 4 local
PROTOTYPES = 7
TOLERANCES = {"rtol": 1e-9, "atol": 1e-11}


def _global_inputs() -> dict[str, torch.Tensor]:
    """Every per-example tensor has its example on dim 0, so a process's share is a row range."""
    generator = torch.Generator().manual_seed(0)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "view_1": draw(GLOBAL_BATCH, FEATURES),
        "view_2": draw(GLOBAL_BATCH, FEATURES),
        "key_1": draw(GLOBAL_BATCH, EMBEDDING),
        "key_2": draw(GLOBAL_BATCH, EMBEDDING),
        "student_crops": draw(GLOBAL_BATCH, CROPS, FEATURES),
        "teacher_crops": draw(GLOBAL_BATCH, 2, PROTOTYPES),
    }


def _shared_parameters() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "weight": 0.7 * torch.randn(EMBEDDING, FEATURES, generator=generator, dtype=torch.float64),
        "dino_weight": torch.randn(PROTOTYPES, FEATURES, generator=generator, dtype=torch.float64),
        "logit_scale": torch.tensor(4.0, dtype=torch.float64),
        "logit_bias": torch.tensor(-2.0, dtype=torch.float64),
    }


def _crop_major(per_example: torch.Tensor) -> torch.Tensor:
    """``(B, crops, K)`` -> ``(crops * B, K)``, chunk c = crop c of every image (the DINO layout)."""
    return per_example.transpose(0, 1).reshape(-1, per_example.shape[-1])


def _dino(inputs, parameters):
    student = _crop_major(inputs["student_crops"] @ parameters["dino_weight"].T)
    teacher = _crop_major(inputs["teacher_crops"])
    center = torch.linspace(-0.5, 0.5, PROTOTYPES, dtype=torch.float64)
    return dino_loss(student, teacher, center, teacher_temperature=0.07)


def _embed(inputs, parameters, name):
    return inputs[name] @ parameters["weight"].T


def _widen(embeddings):
    """``(B, E)`` -> ``(B, 3E)``: more dimensions than rows, from the same parameters."""
    return torch.cat([embeddings, embeddings.pow(2), embeddings.sin()], dim=1)


CASES = {
    "nt_xent": lambda x, p: nt_xent_loss(_embed(x, p, "view_1"), _embed(x, p, "view_2"), temperature=0.5),
    "moco_v3": lambda x, p: moco_v3_loss(
        _embed(x, p, "view_1"), _embed(x, p, "view_2"), x["key_1"], x["key_2"], temperature=0.2
    ),
    "barlow_twins": lambda x, p: barlow_twins_loss(_embed(x, p, "view_1"), _embed(x, p, "view_2"), 0.1),
    "vicreg": lambda x, p: torch.stack(vicreg_loss(0.3 * _embed(x, p, "view_1"), 0.3 * _embed(x, p, "view_2"))),
    # 18 dimensions >= 2 x 8 rows: one process takes the Gram forms, the processes the all-reduced matrices.
    "barlow_twins_wide": lambda x, p: barlow_twins_loss(_widen(_embed(x, p, "view_1")), _widen(_embed(x, p, "view_2")), 0.1),
    "vicreg_wide": lambda x, p: torch.stack(vicreg_loss(_widen(0.3 * _embed(x, p, "view_1")), _widen(0.3 * _embed(x, p, "view_2")))),
    "clip": lambda x, p: clip_loss(_embed(x, p, "view_1"), _embed(x, p, "view_2"), p["logit_scale"]),
    "siglip": lambda x, p: siglip_loss(
        _embed(x, p, "view_1"), _embed(x, p, "view_2"), p["logit_scale"], p["logit_bias"]
    ),
    "dino": _dino,
    # Negative control: without gathering, the negatives are local and the result must differ.
    "nt_xent_local_negatives": lambda x, p: nt_xent_loss(
        _embed(x, p, "view_1"), _embed(x, p, "view_2"), temperature=0.5, gather_distributed=False
    ),
}
# Losses whose value is the same global quantity on every process (not a mean of local rows).
GLOBAL_VALUE_CASES = {"barlow_twins", "barlow_twins_wide", "vicreg", "vicreg_wide"}
# Barlow Twins and the DINO centre reduce sums and counts: processes may hold different row counts.
SPLITS = {"barlow_twins": [3, 5], "barlow_twins_wide": [3, 5], "dino_centre": [2, 6], "sinkhorn": [3, 5]}


def _run_case(name: str, rows: slice, world_size: int, all_reduce=None) -> dict:
    """Loss, input gradients and (DDP-averaged) parameter gradients of `name` on `rows`."""
    inputs = {key: value[rows].clone().requires_grad_(True) for key, value in _global_inputs().items()}
    parameters = {key: value.requires_grad_(True) for key, value in _shared_parameters().items()}
    values = CASES[name](inputs, parameters)  # the loss, or VICReg's (loss, terms...)
    loss = values if values.dim() == 0 else values[0]
    # DDP averages parameter gradients over processes: backpropagate loss / W, then sum.
    (loss / world_size).backward()
    parameter_gradients = {}
    for key, parameter in parameters.items():
        gradient = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        if all_reduce is not None:
            all_reduce(gradient)
        parameter_gradients[key] = gradient
    input_gradients = {key: value.grad for key, value in inputs.items() if value.grad is not None}
    return {"values": values.detach(), "inputs": input_gradients, "parameters": parameter_gradients}


class _ShardedParameters(torch.nn.Module):
    """The shared parameters as one FSDP unit; ``forward`` runs a case with them gathered."""

    def __init__(self):
        super().__init__()
        for key, value in _shared_parameters().items():  # 0-d tensors as (1,): FSDP shards dim 0
            self.register_parameter(key, torch.nn.Parameter(value.reshape(-1) if value.dim() == 0 else value))

    def forward(self, name: str, inputs: dict) -> torch.Tensor:
        parameters = {key: value if key in ("weight", "dino_weight") else value[0]
                      for key, value in self.named_parameters()}
        return CASES[name](inputs, parameters)


def _run_case_fully_sharded(name: str, rows: slice, world_size: int) -> dict:
    """`_run_case` with the parameters sharded by ``fully_shard``. As in the trainer, each process
    backpropagates its own loss and FSDP averages the parameter gradients over processes; the
    gradient of the global loss (the processes' mean) w.r.t. the inputs is then the local one / W."""
    from torch.distributed.fsdp import fully_shard

    module = fully_shard(_ShardedParameters())
    inputs = {key: value[rows].clone().requires_grad_(True) for key, value in _global_inputs().items()}
    values = module(name, inputs)
    (values if values.dim() == 0 else values[0]).backward()
    parameter_gradients = {}
    for key, parameter in module.named_parameters():
        gradient = parameter.grad.full_tensor() if parameter.grad is not None else torch.zeros(parameter.shape, dtype=torch.float64)
        parameter_gradients[key] = gradient.reshape(_shared_parameters()[key].shape)
    input_gradients = {key: value.grad / world_size for key, value in inputs.items() if value.grad is not None}
    return {"values": values.detach(), "inputs": input_gradients, "parameters": parameter_gradients}


def _centre(rows: slice) -> torch.Tensor:
    center = torch.linspace(-0.5, 0.5, PROTOTYPES, dtype=torch.float64).reshape(1, -1)
    return update_dino_center(center, _crop_major(_global_inputs()["teacher_crops"][rows]))


def _sinkhorn(rows: slice) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp targets of the teacher logits' rows (normalised over every process's)."""
    return sinkhorn_knopp_targets(_crop_major(_global_inputs()["teacher_crops"])[rows], temperature=0.07)


def _row_range(name: str, rank: int) -> slice:
    sizes = SPLITS.get(name, [GLOBAL_BATCH // WORLD_SIZE] * WORLD_SIZE)
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _worker(rank: int, world_size: int, store_path: str, result_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        results = {name: _run_case(name, _row_range(name, rank), world_size, dist.all_reduce) for name in CASES}
        results["dino_centre"] = _centre(_row_range("dino_centre", rank))
        results["sinkhorn"] = _sinkhorn(_row_range("sinkhorn", rank))
        results["fully_sharded"] = {name: _run_case_fully_sharded(name, _row_range(name, rank), world_size) for name in CASES}
        torch.save(results, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("distributed_losses")
    run_forked_workers(_worker, WORLD_SIZE, directory)
    return [torch.load(directory / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["ddp", "fully_sharded"])
@pytest.mark.parametrize("name", sorted(set(CASES) - {"nt_xent_local_negatives"}))
def test_two_processes_equal_one_process_on_the_global_batch(distributed_results, name, parallelism):
    single = _run_case(name, slice(None), world_size=1)
    per_rank = [(results if parallelism == "ddp" else results["fully_sharded"])[name] for results in distributed_results]

    mean_values = torch.stack([result["values"] for result in per_rank]).mean(dim=0)
    torch.testing.assert_close(mean_values, single["values"], **TOLERANCES)
    if name in GLOBAL_VALUE_CASES:
        for result in per_rank:
            torch.testing.assert_close(result["values"], single["values"], **TOLERANCES)

    if parallelism == "fully_sharded":  # FSDP's forward hooks reach every input: the unused ones get zero gradients
        for key in set(per_rank[0]["inputs"]) - set(single["inputs"]):
            assert all(not result["inputs"][key].any() for result in per_rank), key
        per_rank = [{**result, "inputs": {key: result["inputs"][key] for key in single["inputs"]}} for result in per_rank]
    assert set(per_rank[0]["inputs"]) == set(single["inputs"])
    for key, full_gradient in single["inputs"].items():
        gathered = torch.cat([result["inputs"][key] for result in per_rank])
        torch.testing.assert_close(gathered, full_gradient, **TOLERANCES)
    for key, full_gradient in single["parameters"].items():
        for result in per_rank:
            torch.testing.assert_close(result["parameters"][key], full_gradient, **TOLERANCES)


@pytest.mark.slow
def test_dino_centre_is_the_global_batch_mean_on_every_process(distributed_results):
    expected = _centre(slice(None))
    for results in distributed_results:
        torch.testing.assert_close(results["dino_centre"], expected, **TOLERANCES)


@pytest.mark.slow
def test_sinkhorn_knopp_targets_over_two_processes_are_those_of_the_global_batch(distributed_results):
    """The first 8 crop-major teacher rows, split 3 / 5 between the processes."""
    expected = _sinkhorn(slice(0, 8))
    gathered = torch.cat([results["sinkhorn"] for results in distributed_results])
    torch.testing.assert_close(gathered, expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(distributed_results[0]["sinkhorn"], _sinkhorn(slice(0, 3)), rtol=1e-3)  # local differs


@pytest.mark.slow
def test_the_comparison_detects_negatives_that_are_not_gathered(distributed_results):
    single = _run_case("nt_xent_local_negatives", slice(None), world_size=1)
    mean_loss = torch.stack([results["nt_xent_local_negatives"]["values"] for results in distributed_results]).mean()
    assert not torch.isclose(mean_loss, single["values"], rtol=1e-3)
