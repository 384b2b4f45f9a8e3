"""Pickle-free checkpoints: exact round trip of model, optimizer, RNG, registered state and data
position; the manifest catches every truncated, emptied or altered file; pickles are never read."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn

from hf_ssl.training import DamagedCheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from hf_ssl.training.checkpointing import (
    MANIFEST_NAME,
    join_state,
    prune_checkpoints,
    read_run_arguments,
    split_state,
    verify_checkpoint,
)


class RunningMean:
    """Extra per-run state a method registers with `accelerator.register_for_checkpointing`."""

    def __init__(self):
        self.total = torch.zeros(3)
        self.count = 0
        self.history = ()

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count, self.history = state["total"], state["count"], state["history"]


def _training_setup(extra=None):
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model.register_buffer("centre", torch.zeros(2))  # e.g. a DINO centre: model state covers it
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.99))
    model, optimizer = accelerator.prepare(model, optimizer)
    if extra is not None:
        accelerator.register_for_checkpointing(extra)
    return accelerator, model, optimizer


def _step(model, optimizer) -> None:
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        model.centre.add_(1.0)


def _save(accelerator, output_dir: Path, step: int, limit: int = 3) -> Path:
    return save_checkpoint(
        accelerator, output_dir, step, {"step": step, "world_size": 1},
        {"batches": {"epoch": 1, "loader": {"_base_seed": 2**62 + 7, "offsets": [1, 2]}}, "skipped_samples": 4},
        save_total_limit=limit, run_arguments={"seed": 0, "data_files": ["a.parquet"]},
    )


def _run_with_checkpoints(output_dir: Path, steps=(1, 2)):
    accelerator, model, optimizer = _training_setup()
    paths = []
    for step in steps:
        _step(model, optimizer)
        paths.append(_save(accelerator, output_dir, step))
    return paths


def test_state_split_round_trips_every_type():
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 2)}},
        "param_groups": [{"betas": (0.9, 0.999), "params": [0], "fused": None, "lr": 1e-3}],
        "numpy": ("MT19937", np.arange(5, dtype=np.uint32), 2, 0, 0.0),
        "scalar": np.int64(7),
        "a.b": torch.ones(1),
        "a": {"b": torch.zeros(1)},  # same flat path as "a.b": must not collide
        "__tensor__": "a key that looks like a tag",
    }
    structure, tensors = split_state(state)
    json.dumps(structure)  # JSON-able
    restored = join_state(json.loads(json.dumps(structure)), tensors)
    assert list(restored["state"]) == [0] and restored["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(restored["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert restored["numpy"][1].dtype == np.uint32 and np.array_equal(restored["numpy"][1], np.arange(5))
    assert isinstance(restored["scalar"], np.int64) and restored["scalar"] == 7
    assert torch.equal(restored["a.b"], torch.ones(1)) and torch.equal(restored["a"]["b"], torch.zeros(1))
    assert restored["__tensor__"] == "a key that looks like a tag"
    with pytest.raises(TypeError, match=r"cannot store object at state\.bad"):
        split_state({"bad": object()})


def test_round_trip_is_exact_and_pickle_free(tmp_path):
    extra = RunningMean()
    accelerator, model, optimizer = _training_setup(extra)
    _step(model, optimizer)
    extra.total += 2.5
    extra.count, extra.history = 4, (1, 2)
    random.seed(11)
    np.random.seed(12)
    path = _save(accelerator, tmp_path, 3)
    assert sorted(p.suffix for p in path.iterdir()) and all(p.suffix in (".json", ".safetensors") for p in path.iterdir())
    assert set(json.loads((path / MANIFEST_NAME).read_text())["files"]) == {p.name for p in path.iterdir()} - {MANIFEST_NAME}
    expected = {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": json.dumps(split_state(optimizer.state_dict())[0]),
        "optimizer_tensors": {k: v.clone() for k, v in split_state(optimizer.state_dict())[1].items()},
        "random": (random.random(), np.random.rand(), torch.rand(2)),
    }
    # change everything, then restore
    _step(model, optimizer)
    extra.total.zero_()
    extra.count, extra.history = 0, ()
    trainer_state, data_state = load_checkpoint(accelerator, path)
    assert trainer_state == {"step": 3, "world_size": 1}
    assert data_state["batches"]["loader"]["_base_seed"] == 2**62 + 7 and data_state["skipped_samples"] == 4
    assert read_run_arguments(path) == {"data_files": ["a.parquet"], "seed": 0}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected["weights"][name]), name
    assert json.dumps(split_state(optimizer.state_dict())[0]) == expected["optimizer"]
    for name, tensor in split_state(optimizer.state_dict())[1].items():
        assert torch.equal(tensor, expected["optimizer_tensors"][name]), name
    assert torch.equal(extra.total, torch.full((3,), 2.5)) and (extra.count, extra.history) == (4, (1, 2))
    random_after = (random.random(), np.random.rand(), torch.rand(2))
    assert random_after[:2] == expected["random"][:2] and torch.equal(random_after[2], expected["random"][2])


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # one flipped byte, same size
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))


CHECKPOINT_FILES = [
    "model.safetensors", "optimizer.json", "optimizer.safetensors", "random_states_0.json",
    "random_states_0.safetensors", "data_state_0.json", "trainer_state.json", "run_arguments.json", MANIFEST_NAME,
]


@pytest.mark.parametrize("how", ["truncated", "empty", "altered"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_damaged_file_falls_back_or_is_named(tmp_path, caplog, name, how):
    older, newer = _run_with_checkpoints(tmp_path)
    assert sorted(p.name for p in newer.iterdir()) == sorted(CHECKPOINT_FILES)
    _damage(newer / name, how)
    with caplog.at_level(logging.WARNING, logger="hf_ssl.training.checkpointing"):
        assert latest_checkpoint(tmp_path) == older
    assert f"{newer} is damaged: {name}" in caplog.text
    accelerator, _, _ = _training_setup()
    with pytest.raises(DamagedCheckpointError, match=f"{newer} is damaged: {name} "):
        load_checkpoint(accelerator, newer)
    _damage(older / name, how)
    with pytest.raises(DamagedCheckpointError, match=f"{newer} is damaged: {name} .*no older checkpoint is intact"):
        latest_checkpoint(tmp_path)


def test_pickles_in_a_checkpoint_are_never_unpickled(tmp_path, monkeypatch):
    (path,) = _run_with_checkpoints(tmp_path, steps=(1,))
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name in ("data_state_0.pt", "random_states_0.pkl", "optimizer.bin", "pytorch_model.bin"):
        (path / name).write_bytes(pickle.dumps(Payload()))
    accelerator, _, _ = _training_setup()
    load_checkpoint(accelerator, path)  # files outside the manifest are never opened
    os.remove(path / MANIFEST_NAME)  # now it looks like a pre-manifest (accelerate, pickle) checkpoint
    with pytest.raises(DamagedCheckpointError, match=r"manifest\.json is missing: the checkpoint holds pickle files"):
        load_checkpoint(accelerator, path)
    assert not marker.exists()


def test_pruning_drops_stale_future_checkpoints_and_is_kill_safe(tmp_path):
    paths = _run_with_checkpoints(tmp_path, steps=(2, 4, 6))
    # A resumed run (from step 2) saving step 3 makes steps 4 and 6 stale (their log lines were dropped).
    removed = prune_checkpoints(tmp_path, save_total_limit=2, newest_step=3)
    assert removed == paths[1:]
    # a delete interrupted after the rename leaves no checkpoint-<step> folder, only a temporary one
    interrupted = tmp_path / "checkpoints" / ".tmp-removing-checkpoint-2"
    os.replace(paths[0], interrupted)
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    prune_checkpoints(tmp_path, save_total_limit=1)
    assert not interrupted.exists()


def test_verify_reports_a_missing_file(tmp_path):
    (path,) = _run_with_checkpoints(tmp_path, steps=(1,))
    os.remove(path / "optimizer.safetensors")
    with pytest.raises(DamagedCheckpointError, match="optimizer.safetensors is missing"):
        verify_checkpoint(path)
