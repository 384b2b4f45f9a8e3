"""The optimisation loop: accelerate does devices, processes, accumulation and precision.

One optimizer step = `gradient_accumulation_steps` micro-batches under `accelerator.accumulate`;
the learning rate comes from a precomputed per-step schedule; the recipe's
`after_optimizer_step` runs after every step (EMA teachers); logs go to the accelerate trackers
and to ``training_log.jsonl``; checkpoints are atomic (see `checkpointing`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from hf_ssl.data.loader import TrainingBatches
from hf_ssl.recipes.base import Recipe

from .checkpointing import save_checkpoint
from .schedules import set_learning_rate

TRAINING_LOG_NAME = "training_log.jsonl"


@dataclass
class TrainingState:
    """Counters that a checkpoint restores (everything else is model/optimizer/RNG/data state)."""

    step: int = 0
    num_images_seen: int = 0
    skipped_samples: int = 0
    train_runtime_s: float = 0.0
    world_size: int = 1


@dataclass
class LoopSettings:
    max_steps: int
    max_grad_norm: float | None
    logging_steps: int
    save_steps: int
    save_total_limit: int
    output_dir: str
    run_arguments: dict | None = None  # written into every checkpoint; a resume must not change them


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The augmentation's outputs are the model's keyword inputs; bookkeeping keys are dropped."""
    return {key: value for key, value in batch.items() if key != "skipped_samples"}


def train(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    batches: TrainingBatches,
    learning_rates: torch.Tensor,
    settings: LoopSettings,
    state: TrainingState,
) -> TrainingState:
    """Train until ``state.step == settings.max_steps``; returns the updated state.

    Args:
        learning_rates: ``(max_steps,)`` schedule; step ``s`` uses ``learning_rates[s]``.
        state: counters, possibly restored from a checkpoint (``state.step > 0``).
    """
    log_path = Path(settings.output_dir) / TRAINING_LOG_NAME
    progress = tqdm(
        total=settings.max_steps, initial=state.step, desc="pre-training", disable=not accelerator.is_local_main_process
    )
    window_loss = torch.zeros((), device=accelerator.device)
    window_steps = 0
    window_images = 0
    window_start = time.perf_counter()
    runtime_before = state.train_runtime_s
    run_start = time.perf_counter()
    model.train()
    while state.step < settings.max_steps:
        learning_rate = float(learning_rates[state.step])
        set_learning_rate(optimizer, learning_rate)
        step_loss = torch.zeros((), device=accelerator.device)
        grad_norm = None
        for _ in range(accelerator.gradient_accumulation_steps):
            batch = next(batches)
            skipped = int(batch["skipped_samples"])
            inputs = {key: value.to(accelerator.device, non_blocking=True) for key, value in model_inputs(batch).items()}
            with accelerator.accumulate(model):
                loss = model(**inputs).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach().float() / accelerator.gradient_accumulation_steps
            batch_size = next(iter(inputs.values())).shape[0]
            window_images += batch_size
            state.skipped_samples += skipped
        recipe.after_optimizer_step(accelerator.unwrap_model(model), state.step, settings.max_steps)
        state.step += 1
        state.num_images_seen += accelerator.gradient_accumulation_steps * batch_size * accelerator.num_processes
        window_loss += step_loss
        window_steps += 1
        progress.update(1)

        if state.step % settings.logging_steps == 0 or state.step == settings.max_steps:
            mean_loss = accelerator.reduce(window_loss / window_steps, reduction="mean").item()
            total_skipped = int(accelerator.reduce(torch.tensor(state.skipped_samples, device=accelerator.device), "sum"))
            elapsed = time.perf_counter() - window_start
            record = {
                "step": state.step,
                "loss": mean_loss,
                "learning_rate": learning_rate,
                "epoch": batches.epoch,
                "num_images_seen": state.num_images_seen,
                "skipped_samples": total_skipped,
                "images_per_second": window_images * accelerator.num_processes / max(elapsed, 1e-9),
            }
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"Loss became {mean_loss} at step {state.step}; lower --learning_rate or use fp32")
            accelerator.log(record, step=state.step)
            if accelerator.is_main_process:
                with open(log_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{learning_rate:.2e}", skipped=total_skipped)
            window_loss.zero_()
            window_steps = window_images = 0
            window_start = time.perf_counter()

        if state.step % settings.save_steps == 0 or state.step == settings.max_steps:
            state.train_runtime_s = runtime_before + time.perf_counter() - run_start
            save_checkpoint(
                accelerator,
                settings.output_dir,
                state.step,
                trainer_state=asdict(state),
                data_state={"batches": batches.state_dict(), "skipped_samples": state.skipped_samples},
                save_total_limit=settings.save_total_limit,
                run_arguments=settings.run_arguments,
            )
    progress.close()
    state.train_runtime_s = runtime_before + time.perf_counter() - run_start
    return state
