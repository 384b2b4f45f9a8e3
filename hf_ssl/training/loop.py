"""The optimisation loop: accelerate does devices, processes, accumulation and precision.

One optimizer step = `gradient_accumulation_steps` micro-batches under `accelerator.accumulate`.
Every named schedule of the recipe is read at the step (precomputed, see `hf_ssl.schedules`):
learning rate and weight decay go into the optimizer, the names in
`recipe.forward_schedule_inputs` into ``model.forward``, all of them to the hooks and the log.
The recipe's `after_backward` runs between clipping and the optimizer step, `after_optimizer_step`
after it. Every scalar tensor of the model output is logged to the accelerate trackers and to
``training_log.jsonl``; values stay on the device between logging steps (no host sync per step).
Checkpoints are atomic (see `checkpointing`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from hf_ssl.data.loader import TrainingBatches
from hf_ssl.monitoring import COLLAPSE_THRESHOLD
from hf_ssl.recipes.base import Recipe, StepContext
from hf_ssl.schedules import apply_optimizer_schedules

from hf_ssl.distributed import largest_over_processes

from .checkpointing import save_checkpoint
from .plan import StepTimeEstimate
from .disk_space import disk_full_error, is_disk_full
from .interruption import RESUME_HINT, RunInterrupted, StopRequests, signal_name
from .sharding import is_fully_sharded, whole_model

logger = logging.getLogger(__name__)

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
    """How the loop runs.

    Args:
        periodic_evaluation: ``encoder -> {metric: value}``, run on the main process every
            `eval_steps` optimizer steps (e.g. online kNN on a labelled split); None disables it.
    """

    max_steps: int
    max_grad_norm: float | None
    logging_steps: int
    save_steps: int
    save_total_limit: int
    output_dir: str
    eval_steps: int | None = None
    periodic_evaluation: Callable[[torch.nn.Module], dict[str, float]] | None = None
    run_arguments: dict | None = None  # written into every checkpoint; a resume must not change them
    stop_requests: StopRequests | None = None  # SIGINT / SIGTERM: checkpoint after the current step


def append_log_record(log_path: Path, record: dict) -> None:
    """Append `record` as one line of ``training_log.jsonl``.

    Raises:
        DiskFullError: the disk filled during the write; the part written is cut off again, so the
            log never ends in a torn record.
    """
    data = (json.dumps(record) + "\n").encode("utf-8")
    descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(descriptor, 0, os.SEEK_END)
        written = 0
        try:
            while written < len(data):  # a write may take only part of the line when space runs out
                written += os.write(descriptor, data[written:])
        except OSError as error:
            if not is_disk_full(error):
                raise
            os.ftruncate(descriptor, start)
            raise disk_full_error(
                log_path.parent, f"{log_path.name} (step {record.get('step')})", len(data),
                "Free space, then run the same command with --resume_from_checkpoint latest",
            ) from None
    finally:
        os.close(descriptor)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transform's outputs are the model's keyword inputs; bookkeeping keys are dropped."""
    return {key: value for key, value in batch.items() if key != "skipped_samples"}


def scalar_outputs(outputs) -> dict[str, torch.Tensor]:
    """Every 0-dimensional tensor field of a model output (``loss``, ``mim_loss``, metrics ...)."""
    return {key: value.detach().float() for key, value in outputs.items() if torch.is_tensor(value) and value.ndim == 0}


class _ScalarWindow:
    """Sums of the logged scalars since the last logging step, kept on the device."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.images = 0

    def add(self, scalars: dict[str, torch.Tensor], weight: float) -> None:
        for key, value in scalars.items():
            self.sums[key] = self.sums[key] + value * weight if key in self.sums else value * weight

    def means(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over the window and over processes (one host sync)."""
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[name] for name in names]) / max(self.steps, 1)
        reduced = accelerator.reduce(stacked, reduction="mean").tolist()
        return dict(zip(names, reduced))

    def reset(self) -> None:
        self.sums, self.steps, self.images = {}, 0, 0


def train(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    batches: TrainingBatches,
    schedules: dict[str, torch.Tensor],
    settings: LoopSettings,
    state: TrainingState,
) -> TrainingState:
    """Train until ``state.step == settings.max_steps``; returns the updated state.

    Args:
        schedules: ``{name: (max_steps,) tensor}`` from `recipe.schedules`; step ``s`` uses
            ``schedule[s]``; ``learning_rate`` and ``weight_decay`` are required.
        state: counters, possibly restored from a checkpoint (``state.step > 0``).
    """
    values_per_step = {name: values.tolist() for name, values in schedules.items()}
    log_path = Path(settings.output_dir) / TRAINING_LOG_NAME
    progress = tqdm(
        total=settings.max_steps, initial=state.step, desc="pre-training", disable=not accelerator.is_local_main_process
    )
    window = _ScalarWindow()
    window_start = time.perf_counter()
    runtime_before = state.train_runtime_s
    run_start = time.perf_counter()
    unwrapped = accelerator.unwrap_model(model)
    collapsed = False

    def save() -> Path:
        state.train_runtime_s = runtime_before + time.perf_counter() - run_start
        return save_checkpoint(
            accelerator,
            settings.output_dir,
            state.step,
            trainer_state=asdict(state),
            data_state={"batches": batches.state_dict(), "skipped_samples": state.skipped_samples},
            save_total_limit=settings.save_total_limit,
            run_arguments=settings.run_arguments,
        )

    estimate = StepTimeEstimate(state.step, settings.max_steps)
    model.train()
    stop_requests = settings.stop_requests
    try:
        if stop_requests is not None:
            stop_requests.start_deferring()
        while state.step < settings.max_steps:
            values = {name: column[state.step] for name, column in values_per_step.items()}
            apply_optimizer_schedules(optimizer, values["learning_rate"], values["weight_decay"])
            context = StepContext(step=state.step, max_steps=settings.max_steps, values=values)
            scheduled_inputs = {name: values[name] for name in recipe.forward_schedule_inputs}
            grad_norm = None
            for _ in range(accelerator.gradient_accumulation_steps):
                batch = next(batches)
                state.skipped_samples += int(batch["skipped_samples"])
                inputs = {key: value.to(accelerator.device, non_blocking=True) for key, value in model_inputs(batch).items()}
                with accelerator.accumulate(model):
                    outputs = model(**inputs, **scheduled_inputs)
                    accelerator.backward(outputs.loss)
                    if accelerator.sync_gradients:
                        if settings.max_grad_norm:
                            grad_norm = accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                        recipe.after_backward(unwrapped, context)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                window.add(scalar_outputs(outputs), 1.0 / accelerator.gradient_accumulation_steps)
                batch_size = next(iter(inputs.values())).shape[0]
                window.images += batch_size
            recipe.after_optimizer_step(unwrapped, context)
            state.step += 1
            state.num_images_seen += accelerator.gradient_accumulation_steps * batch_size * accelerator.num_processes
            window.steps += 1
            progress.update(1)
            message = estimate.after_step(state.step)
            if message is not None and accelerator.is_main_process:
                progress.write(message)

            if state.step % settings.logging_steps == 0 or state.step == settings.max_steps:
                means = window.means(accelerator)
                total_skipped = int(accelerator.reduce(torch.tensor(state.skipped_samples, device=accelerator.device), "sum"))
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": state.step,
                    **means,
                    **values,
                    "epoch": batches.epoch,
                    "num_images_seen": state.num_images_seen,
                    "skipped_samples": total_skipped,
                    "images_per_second": window.images * accelerator.num_processes / max(elapsed, 1e-9),
                }
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                if not math.isfinite(means["loss"]):
                    raise FloatingPointError(f"Loss became {means['loss']} at step {state.step}; lower --learning_rate or use fp32")
                if "embedding_std" in means and (means["embedding_std"] < COLLAPSE_THRESHOLD) != collapsed:
                    collapsed = not collapsed
                    if collapsed:
                        logger.warning(
                            "Representation collapse at step %d: normalised embedding std %.3f < %.2f (1 = spread out, "
                            "0 = every image maps to one point). Check the learning rate, the augmentations and the "
                            "teacher/EMA settings.", state.step, means["embedding_std"], COLLAPSE_THRESHOLD,
                        )
                    else:
                        logger.info("Embeddings spread out again at step %d (std %.3f)", state.step, means["embedding_std"])
                accelerator.log(record, step=state.step)
                if accelerator.is_main_process:
                    append_log_record(log_path, record)
                progress.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{values['learning_rate']:.2e}", skipped=total_skipped)
                window.reset()
                window_start = time.perf_counter()

            evaluating = settings.eval_steps and state.step % settings.eval_steps == 0
            if evaluating and (settings.periodic_evaluation is not None or is_fully_sharded(accelerator)):
                evaluated = whole_model(accelerator, model)  # under FSDP every process gathers, the main one evaluates
                if accelerator.is_main_process and settings.periodic_evaluation is not None:
                    metrics = settings.periodic_evaluation(evaluated.get_backbone())
                    accelerator.log(metrics, step=state.step)
                    append_log_record(log_path, {"step": state.step, **metrics})
                    progress.write(f"step {state.step}: " + ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
                model.train()

            saved = state.step % settings.save_steps == 0 or state.step == settings.max_steps
            checkpoint = save() if saved else None
            if stop_requests is not None:
                # Every process stops at the same step (the checkpoint is collective): one per-step
                # collective in multi-process runs, none in a single process.
                stop_signal = largest_over_processes(stop_requests.received or 0, accelerator.device)
                if stop_signal:
                    checkpoint = checkpoint or save()
                    raise RunInterrupted(stop_signal, f"stopped by {signal_name(stop_signal)} at step {state.step}: "
                                                      f"checkpoint written to {checkpoint}; {RESUME_HINT}")
    finally:
        if stop_requests is not None:
            stop_requests.deferring = False
        progress.close()
    state.train_runtime_s = runtime_before + time.perf_counter() - run_start
    return state
