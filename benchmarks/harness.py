"""The measuring harness of the benchmark suite: host facts, load guard, matmul rate, FLOPs, memory, rounds.

Everything here is independent of what is measured: `measure_rounds` times any set of named
callables round-robin (interleaved, repeated), `count_flops` and `step_memory` look at one call,
`host_facts` / `load_snapshot` / `matmul_rate` describe the machine the numbers belong to.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

# The 1-minute load average above which a run is refused (timings taken next to other work on a
# few cores are not comparable: a test suite in the background halves the matmul rate).
MAX_LOAD_AVERAGE = 0.5
# CPU flags that decide whether bf16 matmuls run natively or are emulated through fp32.
# Matmul-rate probe: one call of at least this long, on sides up to (CPU, CUDA).
MATMUL_CALL_SECONDS = 0.05
MATMUL_LARGEST_SIDE = (4096, 16384)
BF16_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile", "amx_int8")


def load_snapshot() -> dict:
    """Uptime and the 1 / 5 / 15-minute load averages now."""
    with open("/proc/uptime", encoding="utf-8") as handle:
        uptime = float(handle.read().split()[0])
    return {"uptime_seconds": round(uptime, 1), "load_average": [round(value, 2) for value in os.getloadavg()]}


def load_problem(load_average: float, maximum: float = MAX_LOAD_AVERAGE) -> str | None:
    """The reason timings would not be comparable (None when the machine is quiet enough)."""
    if load_average > maximum:
        return f"load average {load_average:.2f} at start: timings not comparable"
    return None


def _cpu_model_and_flags(cpuinfo_path: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open(cpuinfo_path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model, flags


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 matmuls run on native units (CUDA with bf16, AVX512-BF16 or AMX on CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from hf_ssl.training.runtime import cpu_has_native_bf16

    return cpu_has_native_bf16()


def host_facts(device: torch.device) -> dict:
    """What the numbers of a run belong to: CPU model and bf16 flags, threads, versions, GPU."""
    import torchvision
    import transformers

    cpu_model, flags = _cpu_model_and_flags()
    facts = {
        "cpu_model": cpu_model,
        "cpu_cores_visible": os.cpu_count(),
        "cpu_bf16_flags": [flag for flag in BF16_CPU_FLAGS if flag in flags],
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "device": device.type,
        "bf16_native": bf16_is_native(device),
    }
    try:
        import lightly

        facts["lightly"] = lightly.__version__
    except ImportError:
        facts["lightly"] = None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts["gpu_name"] = properties.name
        facts["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
        facts["cuda"] = torch.version.cuda
    return facts


def host_slug(facts: dict) -> str:
    """A file name for the host: the GPU name on CUDA, else the CPU model and its core count."""
    if facts["device"] == "cuda":
        name = facts["gpu_name"]
    else:
        name = f"{facts['cpu_model']} {facts['cpu_cores_visible']}cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "host"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_matmul(first: torch.Tensor, second: torch.Tensor, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    torch.mm(first, second)
    synchronize(device)
    return time.perf_counter() - start


def matmul_rate(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> dict:
    """GFLOP/s of the best square ``torch.mm`` over about `seconds` (at least 3 timed calls).

    The side doubles from 256 until one call takes `MATMUL_CALL_SECONDS` (or reaches
    `MATMUL_LARGEST_SIDE`): large enough to reach the kernel's rate, small enough where a dtype
    runs on a slow fallback (bf16 without native units ran at 0.2 GFLOP/s on one host). The best
    call is the least disturbed one, the closest to what the host can do.

    Returns:
        ``{"gflops": ..., "side": ...}``.
    """
    largest = MATMUL_LARGEST_SIDE[device.type == "cuda"]
    generator = torch.Generator().manual_seed(0)
    side = 256
    while True:
        first = torch.randn(side, side, generator=generator).to(device=device, dtype=dtype)
        second = torch.randn(side, side, generator=generator).to(device=device, dtype=dtype)
        _time_matmul(first, second, device)  # first call: kernel selection, allocation
        if side >= largest or _time_matmul(first, second, device) >= MATMUL_CALL_SECONDS:
            break
        side *= 2
    best, calls, started = float("inf"), 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        best = min(best, _time_matmul(first, second, device))
        calls += 1
    return {"gflops": 2 * side**3 / best / 1e9, "side": side}


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                        **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch 2.14's FlopCounterMode has formulas for the CUDA attention kernels but none for the CPU
# one, so CPU attention would count as zero FLOPs (utilisation 6-10 % low on a ViT-S step). The
# CUDA kernels' formulas apply unchanged: same (B, H, L, E) layout, and the backward recomputes the
# attention scores as the CUDA flash kernel does (5 matmuls, against 4 for the math backend).
CPU_ATTENTION_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flops,
}


def count_flops(function: Callable[[], object]) -> int:
    """FLOPs of one call of `function` (matmuls, convolutions, attention: what FlopCounterMode counts)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOP_FORMULAS) as counter:
        function()
    return counter.get_total_flops()


def tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (shared storages counted once)."""
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def _cpu_transient_peak(function: Callable[[], object]) -> int:
    """Peak of the bytes allocated minus freed by the CPU allocator during one call, from the profiler's memory events."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    events = [event for event in profiler.profiler.kineto_results.events()
              if event.name() == "[memory]" and event.device_type() == DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def transient_peak_bytes(function: Callable[[], object], device: torch.device) -> int:
    """The most memory one call of `function` holds above what was allocated before it.

    CUDA: the caching allocator's peak statistic; CPU: the profiler's allocator events (the same
    quantity: tensor bytes, without allocator caches or fragmentation).
    """
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        function()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _cpu_transient_peak(function)


@dataclass
class Timings:
    """Seconds of each round of one measured entry."""

    items_per_call: int
    calls_per_round: int
    seconds: list[float] = field(default_factory=list)

    def rates(self) -> list[float]:
        """Items per second of each round."""
        return [self.items_per_call * self.calls_per_round / seconds for seconds in self.seconds]

    def summary(self) -> dict:
        rates = self.rates()
        return {
            "best_per_second": max(rates),
            "median_per_second": statistics.median(rates),
            "rounds_per_second": rates,
            "best_seconds_per_call": min(self.seconds) / self.calls_per_round,
        }


def measure_rounds(
    entries: dict[str, Callable[[], object]],
    items_per_call: dict[str, int],
    rounds: int,
    calls_per_round: int,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Timings]:
    """Time every entry `calls_per_round` times per round, round-robin, for `rounds` rounds.

    Within a round each entry runs once, in turn (the order reverses every other round), so a
    change of machine load hits every entry alike. The device is synchronised only around each
    entry's timed calls, never between them.
    """
    timings = {name: Timings(items_per_call[name], calls_per_round) for name in entries}
    names = list(entries)
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            call = entries[name]
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls_per_round):
                call()
            synchronize(device)
            timings[name].seconds.append(time.perf_counter() - start)
            if progress is not None:
                rate = timings[name].rates()[-1]
                progress(f"round {round_index + 1}/{rounds} {name}: {rate:.2f}/s")
    return timings


__all__ = [
    "CPU_ATTENTION_FLOP_FORMULAS",
    "MAX_LOAD_AVERAGE",
    "Timings",
    "bf16_is_native",
    "count_flops",
    "host_facts",
    "host_slug",
    "load_problem",
    "load_snapshot",
    "matmul_rate",
    "measure_rounds",
    "synchronize",
    "tensor_bytes",
    "transient_peak_bytes",
]
