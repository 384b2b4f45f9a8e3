"""Process and thread set-up that accelerate leaves to the caller on CPU-only machines."""

from __future__ import annotations

import os

import torch


def configure_cpu_threads(device: torch.device, processes_per_machine: int, dataloader_num_workers: int) -> int | None:
    """On CPU, give the training process the cores its DataLoader workers do not use.

    OpenMP threads spin-wait for each other: when workers (or a second process) take one of the
    cores, a 2-thread matmul stalls on the thread that lost its core. On 2 shared cores we
    measured a vit-micro step at 0.15 s with 1 thread and 0.6-9 s with 2. An explicit
    OMP_NUM_THREADS is respected; LOCAL_WORLD_SIZE (set by the launchers) counts processes on this machine. Returns the thread count set (None when nothing changed).
    """
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = os.cpu_count() or 1
    processes_per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", processes_per_machine))
    threads = max(1, cores // max(processes_per_machine, 1) - dataloader_num_workers)
    torch.set_num_threads(threads)
    return threads


def multi_process_cpu_run() -> bool:
    """True for a multi-process launch on a machine without CUDA.

    accelerate 1.15 only selects MULTI_CPU (gloo) when told ``cpu=True``; under
    ``accelerate launch --multi_gpu`` on a CPU-only machine it otherwise reports
    DistributedType.NO, and every process believes it is the only (main) one.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return world_size > 1 and not torch.cuda.is_available()


def cpu_has_native_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in its flags).

    Without those units oneDNN emulates bf16 matmuls through fp32 and autocast only adds casts.
    """
    try:
        with open(cpuinfo_path, encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_mixed_precision(use_cpu: bool = False) -> str:
    """``"bf16"`` where the hardware computes it natively (CUDA GPUs with bf16, CPUs with AVX512-BF16
    or AMX), else ``"no"``: what ``--mixed_precision auto`` (the default) resolves to."""
    if not use_cpu and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def forget_previous_run_state() -> None:
    """Let a second training run in the same process (a notebook, a test session) pick its own precision.

    accelerate keeps one AcceleratorState per process and refuses an `Accelerator` whose
    ``mixed_precision`` differs from the first one's ("AcceleratorState has already been
    initialized and cannot be changed"): after an fp32 run, a ``--mixed_precision auto`` run on a
    bf16 host would fail. In a single process nothing else depends on that state, so it is cleared;
    PartialState (the process group of a launched run) is kept.
    """
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=False)
