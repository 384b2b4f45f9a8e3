"""One measurement group: every implementation (and every hf-ssl lever variant) of one (method, size,
precision), built side by side, warmed up, FLOP-counted, memory-measured, then timed in interleaved rounds.

`measure_group` returns one row per entry (measured, skipped or failed, with the reason); models are
released before the next group so that only one group's models are resident at a time.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cases import (
    CASES,
    HF_SSL,
    SIZES,
    CaseInputs,
    NotApplicable,
    implementations,
    prepare_case,
)
from harness import count_flops, measure_rounds, tensor_bytes, transient_peak_bytes
from steps import (
    BASELINE,
    Levers,
    TrainingStep,
    build_training_step,
    lever_variants,
    optimizer_implementation,
    resident_tensors,
)

MEMORY_MODES = ("tensors", "process", "none")
# The learning rate does not change a step's cost; a small one keeps long runs finite.
LEARNING_RATE = 1e-4
NO_ATTENTION_KERNEL = "No available kernel"


@dataclass
class SuiteOptions:
    """Settings shared by every group of a run (see run.py's flags)."""

    device: torch.device
    batch_size: int = 8
    rounds: int = 3
    steps: int = 5
    warmup: int = 2
    levers: tuple[str, ...] = ()
    sdpa_backends: tuple[str, ...] | None = None
    compile: bool = False
    memory: str = "tensors"
    memory_steps: int = 2
    seed: int = 0
    threads: int = 1
    cpu_allocator: str = "cached"


@dataclass
class Entry:
    row: dict
    build: Callable[[], TrainingStep] | None = None
    step: TrainingStep | None = None
    flops_of: str | None = None  # for lever rows: the implementation whose baseline FLOPs they share


def _identity(inputs: CaseInputs, precision: str, implementation: str, levers: Levers) -> dict:
    return {
        "method": inputs.case.method, "size": inputs.size.name, "model": inputs.size.model,
        "image_size": inputs.image_size, "precision": precision, "implementation": implementation,
        "levers": levers.as_dict(), "lever": levers.label(), "batch_source": inputs.batch_source,
    }


def _step_builder(inputs: CaseInputs, builder, precision: str, levers: Levers, options: SuiteOptions):
    def build() -> TrainingStep:
        torch.manual_seed(options.seed)
        return build_training_step(
            builder(inputs), inputs.batch, options.device, precision, levers, LEARNING_RATE,
            inputs.optimizer.betas, inputs.optimizer.gradient_clip_norm,
        )

    return build


def plan_group(inputs: CaseInputs, precision: str, options: SuiteOptions) -> list[Entry]:
    """Every implementation with the baseline levers, then the hf-ssl lever variants."""
    entries = []
    for implementation, builder in implementations(inputs.case).items():
        variants = [BASELINE]
        if implementation == HF_SSL and inputs.recipe is not None:  # an unregistered method gets one skipped row
            variants += lever_variants(list(options.levers), options.device, options.sdpa_backends, options.compile,
                                       inputs.size.has_attention, inputs.size.is_convolutional, precision)
        for levers in variants:
            entries.append(Entry(
                row=_identity(inputs, precision, implementation, levers),
                build=_step_builder(inputs, builder, precision, levers, options),
                flops_of=None if levers == BASELINE else implementation,
            ))
    return entries


def _fail(entry: Entry, status: str, error: BaseException, say: Callable[[str], None]) -> None:
    entry.row.update(status=status, reason=f"{type(error).__name__}: {error}" if status == "failed" else str(error))
    entry.step = None
    say(f"  {entry.row['implementation']} [{entry.row['lever']}]: {status}: {entry.row['reason']}")


def _prepare(entry: Entry, options: SuiteOptions, say: Callable[[str], None]) -> None:
    """Build and warm up one entry; a failure marks the row instead of ending the run."""
    try:
        entry.step = entry.build()
        entry.row["note"] = entry.step.model_step.note
        entry.row["trained_parameters"] = sum(parameter.numel() for parameter in entry.step.parameters)
        entry.row["optimizer_implementation"] = optimizer_implementation(entry.step.optimizer, options.device)
        if entry.step.attention is not None:
            entry.row["attention"] = entry.step.attention
        start = time.perf_counter()
        entry.step.run()
        entry.row["first_step_seconds"] = time.perf_counter() - start  # includes compilation for torch.compile
        for _ in range(options.warmup - 1):
            entry.step.run()
    except NotApplicable as error:
        _fail(entry, "skipped", error, say)
    except ModuleNotFoundError as error:
        hint = " (pip install --no-deps --target .lightly lightly, then --lightly_path .lightly)" if error.name == "lightly" else ""
        _fail(entry, "skipped", ModuleNotFoundError(f"{error}{hint}"), say)
    except RuntimeError as error:
        # A forced SDPA backend without a kernel for these inputs (CUDA flash in fp32) does not apply here.
        _fail(entry, "skipped" if NO_ATTENTION_KERNEL in str(error) else "failed", error, say)
    except Exception as error:  # noqa: BLE001  one model failing (e.g. a compile error) is a row, not the end of the run
        _fail(entry, "failed", error, say)


def _memory(entry: Entry, precision: str, options: SuiteOptions) -> None:
    if options.memory == "tensors":
        resident = tensor_bytes(resident_tensors(entry.step, options.device))
        transient = transient_peak_bytes(entry.step.run, options.device)
        entry.row.update(memory_mode="tensors", resident_mib=resident / 2**20, step_peak_mib=transient / 2**20,
                         peak_memory_mib=(resident + transient) / 2**20)
    elif options.memory == "process":
        entry.row.update(memory_mode="process", peak_memory_mib=process_peak_memory(entry.row, precision, options))


def process_peak_memory(row: dict, precision: str, options: SuiteOptions) -> float:
    """Peak memory of this row's training in a fresh process (run.py ``--memory_worker``), MiB."""
    specification = {
        "method": row["method"], "size": row["size"], "precision": precision, "implementation": row["implementation"],
        "levers": row["levers"], "batch_size": options.batch_size, "seed": options.seed,
        "device": str(options.device), "steps": options.memory_steps, "threads": options.threads,
    }
    script = Path(__file__).with_name("run.py")
    environment = dict(os.environ)
    lightly = sys.modules.get("lightly")
    if lightly is not None:  # --lightly_path of this run: the worker imports lightly from the same place
        folder = str(Path(lightly.__file__).parents[1])
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, (folder, environment.get("PYTHONPATH"))))
    completed = subprocess.run([sys.executable, str(script), "--cpu_allocator", options.cpu_allocator,
                                "--memory_worker", json.dumps(specification)],
                               check=True, capture_output=True, text=True, env=environment)
    return float(json.loads(completed.stdout.strip().splitlines()[-1])["peak_memory_mib"])


def _resident_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def memory_worker(specification: dict) -> dict:
    """In a fresh process: build one row's step, run it, report the peak memory growth.

    CPU: growth of the peak resident set (Linux VmHWM, reset before the model is built) over the
    steps; CUDA: ``torch.cuda.max_memory_allocated`` (the process holds only this model).
    """
    device = torch.device(specification["device"])
    torch.set_num_threads(specification["threads"])
    case, size = CASES[specification["method"]], SIZES[specification["size"]]
    inputs = prepare_case(case, size, specification["batch_size"], specification["seed"])
    options = SuiteOptions(device=device, batch_size=specification["batch_size"], seed=specification["seed"])
    builder = implementations(case)[specification["implementation"]]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        start = _resident_kib("VmRSS") * 1024
    step = _step_builder(inputs, builder, specification["precision"], Levers(**specification["levers"]), options)()
    for _ in range(specification["steps"]):
        step.run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _resident_kib("VmHWM") * 1024 - start
    return {"peak_memory_mib": peak / 2**20}


def measure_group(inputs: CaseInputs, precision: str, options: SuiteOptions, say: Callable[[str], None]) -> list[dict]:
    """All rows of one (method, size, precision): build, warm up, count FLOPs, measure memory, time."""
    label = f"[{inputs.case.method} {inputs.size.name} {precision}]"
    entries = plan_group(inputs, precision, options)
    for entry in entries:
        _prepare(entry, options, say)
    measured = [entry for entry in entries if entry.step is not None]
    baseline_flops = {}
    for entry in measured:
        if entry.flops_of is None:
            try:
                baseline_flops[entry.row["implementation"]] = count_flops(entry.step.run)
            except Exception as error:  # noqa: BLE001  a counting failure leaves the row timed, without utilisation
                entry.row["flops_error"] = f"{type(error).__name__}: {error}"
        entry.row["flops_per_step"] = baseline_flops.get(entry.flops_of or entry.row["implementation"])
        _memory(entry, precision, options)
    names = {f"{entry.row['implementation']} [{entry.row['lever']}]": entry for entry in measured}
    timings = measure_rounds(
        {name: entry.step.run for name, entry in names.items()}, {name: options.batch_size for name in names},
        options.rounds, options.steps, options.device, progress=lambda message: say(f"{label} {message}"),
    )
    for name, entry in names.items():
        summary = timings[name].summary()
        entry.row.update(
            status="measured",
            images_per_second_best=summary["best_per_second"],
            images_per_second_median=summary["median_per_second"],
            images_per_second_rounds=summary["rounds_per_second"],
            seconds_per_step_best=summary["best_seconds_per_call"],
        )
    rows = [entry.row for entry in entries]
    for entry in entries:
        entry.step = None
    gc.collect()
    if options.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def skipped_rows(case_name: str, size_name: str, precision: str, reason: str) -> list[dict]:
    """The row saying why a (method, size) was not measured at all."""
    return [{"method": case_name, "size": size_name, "precision": precision, "implementation": "all",
             "lever": "baseline", "status": "skipped", "reason": reason}]


__all__ = ["MEMORY_MODES", "SuiteOptions", "measure_group", "memory_worker", "plan_group", "skipped_rows"]
