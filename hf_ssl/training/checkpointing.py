"""Atomic, resumable checkpoints: accelerate's `save_state` plus the data stream's position.

Layout: ``<output_dir>/checkpoints/checkpoint-<step>/`` holding what `Accelerator.save_state`
writes (model, optimizer, every process's RNG state), ``data_state_<rank>.pt`` (each process's
exact stream position: its data differs) and ``trainer_state.json`` (step, images seen, ...).
A checkpoint is written into ``.tmp-checkpoint-<step>`` and renamed only once every process
has finished, so a folder named ``checkpoint-<step>`` is always complete: a kill -9 during a
save leaves a temporary folder that is ignored and later removed, never a half checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TEMPORARY_PREFIX = ".tmp-checkpoint-"
TRAINER_STATE_NAME = "trainer_state.json"


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (by step)."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _write_json_durably(path: Path, payload: dict) -> None:
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    trainer_state: dict,
    data_state: dict,
    save_total_limit: int,
) -> Path:
    """Write checkpoint `step` atomically on every process, then keep the newest `save_total_limit`.

    Args:
        trainer_state: JSON-able run counters (main process writes them).
        data_state: this process's data position (`TrainingBatches.state_dict()`).
    """
    root = checkpoints_root(output_dir)
    temporary = root / f"{TEMPORARY_PREFIX}{step}"
    final = root / f"checkpoint-{step}"
    if accelerator.is_main_process:
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    torch.save(data_state, temporary / f"data_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json_durably(temporary / TRAINER_STATE_NAME, trainer_state)
        if final.exists():
            # Same step saved again (e.g. a resumed run's final save): swap, then drop the old one.
            previous = root / f"{TEMPORARY_PREFIX}{step}-previous"
            os.replace(final, previous)
            os.replace(temporary, final)
            shutil.rmtree(previous)
        else:
            os.replace(temporary, final)
        prune_checkpoints(output_dir, save_total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str | Path, save_total_limit: int) -> list[Path]:
    """Delete all but the newest `save_total_limit` (>= 1) complete checkpoints and stale temporary folders."""
    if save_total_limit < 1:
        raise ValueError(f"save_total_limit must be >= 1 (the newest checkpoint is never deleted), got {save_total_limit}")
    checkpoints = list_checkpoints(output_dir)
    removed = checkpoints[:-save_total_limit]
    for path in removed:
        shutil.rmtree(path)
    for path in checkpoints_root(output_dir).glob(f"{TEMPORARY_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    return removed


def load_checkpoint(accelerator: Accelerator, checkpoint: str | Path) -> tuple[dict, dict]:
    """Restore model, optimizer and RNG states; return ``(trainer_state, this process's data_state)``."""
    checkpoint = Path(checkpoint)
    trainer_state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    if trainer_state.get("world_size") != accelerator.num_processes:
        raise ValueError(
            f"Checkpoint {checkpoint} was written by {trainer_state.get('world_size')} processes, this run has "
            f"{accelerator.num_processes}: exact resume needs the same number of processes"
        )
    accelerator.load_state(str(checkpoint))
    data_state = torch.load(checkpoint / f"data_state_{accelerator.process_index}.pt", weights_only=False)
    return trainer_state, data_state


def truncate_training_log(log_path: str | Path, last_step: int) -> None:
    """Drop log lines after `last_step` (a killed run may have logged past its last checkpoint)."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    temporary = log_path.with_suffix(".jsonl.tmp")
    temporary.write_text("".join(line + "\n" for line in kept))
    os.replace(temporary, log_path)
