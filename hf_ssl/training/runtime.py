"""Process and thread set-up that accelerate leaves to the caller on CPU-only machines."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
from typing import NoReturn

import torch

# glibc's mallopt parameters (malloc.h) and the environment variables that set the same tunables.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_MALLOC_ENVIRONMENT = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
# Allocations up to this size are served from (and freed back to) the heap; the largest
# activation of a ViT-L step at batch 64 is well under it. mallopt takes a C int.
RETAINED_ALLOCATION_BYTES = 1 << 30


def configure_cpu_threads(device: torch.device, processes_per_machine: int, dataloader_num_workers: int) -> int | None:
    """On CPU, give the training process the cores its DataLoader workers do not use.

    OpenMP threads spin-wait for each other: when workers (or a second process) take one of the
    cores, a 2-thread matmul stalls on the thread that lost its core (on 2 shared cores a step
    gets several times slower: docs/small-image-defaults.md). An explicit
    OMP_NUM_THREADS is respected; LOCAL_WORLD_SIZE (set by the launchers) counts processes on this machine. Returns the thread count set (None when nothing changed).
    """
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    threads = max(1, cores_per_process(processes_per_machine) - dataloader_num_workers)
    torch.set_num_threads(threads)
    return threads


def cores_per_process(processes_per_machine: int = 1) -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's share, not the
    machine's count) divided among the processes on this machine (LOCAL_WORLD_SIZE, set by the
    launchers, else `processes_per_machine`); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity outside Linux
        cores = os.cpu_count() or 1
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", processes_per_machine))
    return max(1, cores // max(processes, 1))


def default_dataloader_workers(most: int) -> int:
    """DataLoader workers per process: its cores less the one the training process computes on, at most `most`."""
    return max(0, min(most, cores_per_process() - 1))


def keep_freed_host_memory(device: torch.device) -> bool:
    """On CPU under glibc, keep the memory a step frees for the next step instead of returning it to the OS.

    glibc serves every allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with
    a fresh mapping, unmapped again at free, and trims the heap top back to the OS: a training
    step allocates and frees the same activations every step, so each step page-faults (and the
    kernel zeroes) them again. A SplitMask ViT-S bf16 step at batch 8 took 66-135 thousand minor
    page faults (0.26-0.53 GiB); with both thresholds raised, 0 after the first step (the
    throughput gained is in README, Training). The memory kept is the step's own high-water
    mark, which the next step reuses, as PyTorch's caching allocator does on a GPU.

    Nothing changes off CPU, off glibc, or when the environment already sets glibc's malloc
    tunables or preloads another allocator (jemalloc, tcmalloc). Returns True when it set them.
    """
    if device.type != "cpu" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    preloaded = os.environ.get("LD_PRELOAD", "")
    if any(name in os.environ for name in _GLIBC_MALLOC_ENVIRONMENT) or any(
            name in preloaded for name in _PRELOADED_ALLOCATORS):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success; the mmap threshold first, since setting the trim threshold
    # alone also stops the mmap threshold adapting (every allocation above 128 KiB is then mapped).
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, RETAINED_ALLOCATION_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, RETAINED_ALLOCATION_BYTES))


def multi_process_cpu_run() -> bool:
    """True for a multi-process launch on a machine without CUDA.

    accelerate 1.15 only selects MULTI_CPU (gloo) when told ``cpu=True``; under
    ``accelerate launch --multi_gpu`` on a CPU-only machine it otherwise reports
    DistributedType.NO, and every process believes it is the only (main) one.
    """
    return launched_process_count() > 1 and not torch.cuda.is_available()


def launched_process_count() -> int:
    """How many processes the launcher (torchrun / accelerate launch) started for this run; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def exit_launched_process(exit_code: int) -> NoReturn:
    """End one of several launched processes once its work is saved, skipping interpreter finalization.

    After ``destroy_process_group``, objects that still reference the gloo process group (FSDP's
    parameter groups, finished work handles holding tensors) are freed during interpreter
    finalization, where releasing a tensor's Python reference from a gloo worker thread can abort
    the process (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#179291
    describes it): a run that had saved everything then fails its launch. Every file is written and
    closed by now; only the standard streams and logging handlers hold buffered output.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(exit_code)


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


# `accelerate launch` exports the precision it was given (flag or config file) to every process;
# when neither sets one it exports "no" too (and warns that it did), so "no" may be a default.
LAUNCHER_PRECISION_VARIABLE = "ACCELERATE_MIXED_PRECISION"
TRAINABLE_PRECISIONS = ("no", "bf16", "fp16")


def launcher_mixed_precision() -> str | None:
    """The precision `accelerate launch` gave this process, or None outside such a launch."""
    value = os.environ.get(LAUNCHER_PRECISION_VARIABLE)
    return value.strip().lower() if value else None


def choose_mixed_precision(requested: str, use_cpu: bool = False) -> tuple[str, str]:
    """What ``--mixed_precision`` becomes, and why (for the run's plan).

    Under ``accelerate launch`` its precision wins over ``auto``. An explicit ``--mixed_precision``
    (flag, YAML or preset) must agree with a launcher's bf16 / fp16; it wins over the launcher's
    ``no``, which accelerate also exports when it was given no precision. Without a launcher,
    ``auto`` is `default_mixed_precision`.

    Raises:
        ConfigurationError: ``--mixed_precision`` contradicts the launcher's bf16 / fp16, or the
            launcher asks for a precision hf-ssl does not train in (fp8).
    """
    from .errors import ConfigurationError

    launcher = launcher_mixed_precision()
    if launcher is not None and launcher not in TRAINABLE_PRECISIONS:
        raise ConfigurationError(f"accelerate launch --mixed_precision {launcher}: hf-ssl trains in {' / '.join(TRAINABLE_PRECISIONS)}")
    if requested == "auto":
        if launcher is not None:
            return launcher, f"accelerate launch's, via {LAUNCHER_PRECISION_VARIABLE}; 'no' when it was given none"
        precision = default_mixed_precision(use_cpu=use_cpu)
        return precision, "auto: " + ("this hardware computes bf16 natively" if precision == "bf16" else "no native bf16 here")
    if launcher in (None, requested):
        return requested, "--mixed_precision"
    if launcher == "no":
        return requested, "--mixed_precision, over accelerate launch's 'no' (also its value when it was given none)"
    raise ConfigurationError(
        f"--mixed_precision {requested} contradicts accelerate launch --mixed_precision {launcher} (flag or config file): "
        "give the precision in one place, or leave hf-ssl's at auto"
    )


def forget_previous_run_state() -> None:
    """Let a second training run in the same process (a notebook, a test session) pick its own precision.

    accelerate keeps one AcceleratorState per process and refuses an `Accelerator` whose
    ``mixed_precision`` differs from the first one's ("AcceleratorState has already been
    initialized and cannot be changed"): after an fp32 run, a ``--mixed_precision auto`` run on a
    bf16 host would fail. In a single process nothing else depends on that state, so it is cleared;
    PartialState (the process group of a launched run) is kept.
    """
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and launched_process_count() == 1:
        AcceleratorState._reset_state(reset_partial_state=False)
