"""What a run will do, said before it does it: the plan printed at start, and the time estimate after a few steps.

A user who gave three flags gets a model, an image size, crops, a batch, a precision and workers
that hf-ssl chose; a DINO ViT-S at 224 px takes over a minute per step on 2 CPU cores. The plan
names every value that decides what the run costs and produces, and where it came from, so that
the flag to change is obvious before the first step.
"""

from __future__ import annotations

import time

from .arguments import PretrainingArguments
from .runtime import choose_mixed_precision, cores_per_process, multi_process_cpu_run

# Steps timed for the estimate, after the first one (which also starts the DataLoader workers and warms up).
TIMED_STEPS = 3


def _origin(field: str, requested: PretrainingArguments, arguments: PretrainingArguments, sized: dict[str, str],
            default: str) -> str:
    """Why `field` has its value: chosen from the data, given (flag, YAML or preset), or a default."""
    if field in sized:
        return sized[field]
    if getattr(requested, field) is not None:
        return "given"
    return "the bundled run's default" if arguments.uses_bundled_dataset else default


def describe_plan(
    requested: PretrainingArguments,
    arguments: PretrainingArguments,
    *,
    sized: dict[str, str],
    views: str,
    world_size: int,
    device: str,
    attention: str,
    compiling: tuple[bool, str],
    checkpoint: str | None = None,
) -> str:
    """The plan, one line per decision with its reason.

    Args:
        requested: the parsed arguments, before any default (None = not given).
        arguments: the resolved arguments the run uses.
        sized: ``{field: why}`` for the values chosen from the data (`hf_ssl.training.sizing`).
        views: what the model sees of each image (`Recipe.describe_views`).
        attention: the resolved attention kernel.
        compiling: whether the model is compiled, and why (`hf_ssl.training.compilation.resolve_compile`).
        checkpoint: the checkpoint the run resumes from, if any.
    """
    _, precision_reason = choose_mixed_precision(requested.mixed_precision, use_cpu=multi_process_cpu_run())
    micro_batch = arguments.total_batch_size // (world_size * arguments.gradient_accumulation_steps)
    rows = [
        ("method", arguments.method, f"--preset {arguments.preset}" if arguments.preset else None),
        ("model", arguments.model, _origin("model", requested, arguments, sized, "the recipe's default")),
        ("image size", f"{arguments.image_size} px", _origin("image_size", requested, arguments, sized, "the recipe's default")),
        ("inputs", views, None),
        ("batch", f"{arguments.total_batch_size} per step = {world_size} process(es) x {micro_batch} x "
                  f"{arguments.gradient_accumulation_steps} accumulation",
         _origin("total_batch_size", requested, arguments, sized, "the default")),
        ("precision", arguments.mixed_precision, precision_reason),
        ("attention", attention, "--attention auto: lean (eager, half its memory) on CPU under bf16, else SDPA" if requested.attention == "auto"
         else "given"),
        ("compile", "torch.compile" if compiling[0] else "eager", compiling[1]),
        ("workers", f"{arguments.dataloader_num_workers} DataLoader worker(s) per process",
         _origin("dataloader_num_workers", requested, arguments, {}, f"{cores_per_process()} core(s) for this process, "
                 "one left to training")),
        ("steps", str(arguments.max_steps), None),
        ("checkpoints", f"every {arguments.save_steps} steps, the last {arguments.save_total_limit} kept", None),
        ("output", arguments.output_dir, f"resuming {checkpoint}" if checkpoint else None),
        ("report", f"{' '.join(arguments.report_protocols)} next to {', '.join(arguments.report_baselines)}"
         if arguments.report_protocols else "none", None),
    ]
    lines = [f"plan ({device}; every value can be set with its flag):"]
    lines += [f"  {name:<12} {value}" + (f"  ({why})" if why else "") for name, value, why in rows]
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"17 min"``, ``"3.2 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class StepTimeEstimate:
    """Times `TIMED_STEPS` steps after the first of this session and says, once, what the rest will take.

    Args:
        first_step: the step the loop starts at (0, or the resumed one).
        max_steps: the step it ends at.
    """

    def __init__(self, first_step: int, max_steps: int):
        self.start_after = first_step + 1
        self.report_at = self.start_after + TIMED_STEPS
        self.max_steps = max_steps
        self.started: float | None = None

    def after_step(self, step: int) -> str | None:
        """Call after each optimizer step; returns the estimate at the step it is due, else None."""
        if step == self.start_after:
            self.started = time.perf_counter()
        if step != self.report_at or self.started is None or step >= self.max_steps:
            return None
        per_step = (time.perf_counter() - self.started) / TIMED_STEPS
        left = self.max_steps - step
        return (f"{per_step:.2f} s per step (steps {self.start_after + 1}-{step}): about "
                f"{format_duration(per_step * left)} for the {left} steps left, checkpoints and evaluations not included")
