"""hf-ssl benchmark suite: every registered method next to its reference implementations, in ONE run.

What one run does
-----------------
1. Refuses to start (exit 2, one line) when the 1-minute load average is above 0.5: timings taken
   next to other work are not comparable. ``--force`` runs anyway and marks the results file
   invalid ("load average X at start: timings not comparable").
2. Measures the host's matmul rate (best square ``torch.mm``, fp32 and bf16) at the start and again
   at the end, and records the CPU model, its bf16 flags (avx512_bf16 / amx), threads, uptime and
   load at start and end, torch / transformers / lightly versions and the GPU name on CUDA. On
   CPU the process keeps freed memory for the next step, as the hf-ssl trainer does
   (``--cpu_allocator_cache``), for every row, references included; ``--cpu_allocator default``
   measures glibc's own behaviour (every step page-faults its large activations in again).
3. Data: per-DataLoader-worker decode + augment images/s of every measured case's own transform on
   224-px JPEGs, PIL vs ``torchvision.io.decode_jpeg`` (uint8 tensors through transforms.v2), and
   the hf-ssl loader stack with ``--loader_workers`` workers.
4. For every method (``--methods``), size (``--sizes``) and precision (``--precisions``): builds
   the hf-ssl model (as ``hf_ssl.cli.pretrain`` does) and every reference implementation
   (transformers' BEiT / SimMIM / ViTMAE / VisionTextDualEncoder classes, lightly for DINO and the
   joint-embedding family) on the same batch, plus one hf-ssl row per lever (``--levers``,
   ``--compile``); warms each up; counts the FLOPs of one step; measures its memory; then times
   them round-robin: ``--rounds`` rounds, each running every row for ``--steps`` steps in turn
   (order reversed every other round), so load changes hit all rows alike.
5. Writes ``<output>/<host>.json`` (everything: settings, host, load, matmul rates, every row with
   its per-round rates, skipped / failed rows with the reason, the time each phase took) and
   ``<output>/<host>.md`` (the tables the README quotes), and prints the Markdown. ``<output>``
   defaults to ``benchmarks/results``; ``<host>`` is the GPU name on CUDA, else the CPU model and
   core count (``--host_name`` to choose). Exit code 1 when a row failed (the files are written).

A step is one optimizer step: forward (under bf16 autocast for ``bf16``) + backward + gradient
clipping at the method's norm + AdamW (the method's betas; hf-ssl with the recipe's parameter
groups, references with hf-ssl's default weight-decay exemptions) + the implementation's hooks
(EMA teacher updates; hf-ssl's schedule values are read at step 500 of 1000). Every
implementation of a group is timed on the same batch: the hf-ssl recipe's own transform applied
to synthetic images (captions for the dual encoder). On
CUDA the batch sits in pinned host memory and is copied to the GPU inside each step, and the
device is synchronised only around each row's timed steps. A method whose hf-ssl recipe is not
registered in this checkout gets a skipped hf-ssl row with the reason; its references still run.

How to run
----------
On a quiet machine (nothing else running; check ``uptime``), from the repository root::

    . .venv/bin/activate
    pip install --no-deps --target .lightly lightly              # once: the lightly references
    python benchmarks/run.py --lightly_path .lightly             # CPU: all methods, all sizes
    python benchmarks/run.py --device cuda --lightly_path .lightly --compile   # a GPU machine
    python benchmarks/run.py --methods splitmask mae --sizes tiny --rounds 5   # a subset
    python benchmarks/run.py --memory process      # peak memory from a fresh process per row

A full CPU run (12 methods x up to 4 sizes, up to 5 hf-ssl rows each) takes hours on 2 cores; bf16
only runs where it is native (see ``precision``). tests/test_benchmarks.py runs ``--sizes micro``
(CI only: it keeps the script working and checks the files' structure, never a timing).

Sizes: ``micro`` (vit-micro at 32 px, CI only), ``tiny`` (ViT-Ti/16), ``small`` (ViT-S/16),
``swin-tiny`` (Swin-T, SimMIM only, 192 px), ``resnet18`` (timm ResNet-18, DINO and the
joint-embedding family). Images are 224 px unless the recipe says otherwise (SimMIM-Swin: 192).

Columns (Markdown; the JSON has the same fields and more)
---------------------------------------------------------
- method / backbone / px / precision: the group; ``fp32`` or ``bf16`` (autocast). The default
  ``--precisions auto`` measures bf16 only where the device computes it natively (CUDA with bf16,
  CPUs with AVX512-BF16 or AMX): elsewhere CPU bf16 matmuls run on a fallback kernel (0.2-0.6
  GFLOP/s on an AVX2 EPYC), so those rows would take hours and say nothing about hf-ssl.
- implementation: ``hf-ssl`` or the reference (its class or ``lightly``).
- img/s best: images per second of the fastest round (the least disturbed); img/s median: of
  the median round. Each round times ``--steps`` consecutive steps.
- x reference: best img/s divided by the group's reference row (in the lever table: by the hf-ssl
  baseline row); > 1 is faster. peak MiB, x reference: the same for memory; < 1 is leaner.
- peak MiB: with ``--memory tensors`` (default), the bytes the row keeps between steps
  (parameters, buffers, optimizer state, batch) plus the peak a step allocates on top of them:
  CUDA's allocator statistics, or on CPU the profiler's allocator events (tensor bytes, no allocator
  caches). With ``--memory process``: a fresh process per row, growth of its peak resident set
  over ``--memory_steps`` steps from before the model is built (CUDA: ``max_memory_allocated``).
- GFLOP/step: FLOPs of one training step from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
  convolutions, attention; the CPU SDPA kernels are registered through ``custom_mapping`` because
  torch 2.14 counts them as zero). Lever rows share their baseline's count.
- utilisation: GFLOP/step / best seconds per step, as a fraction of the host's measured bf16 matmul
  rate (fp32 where bf16 is not native), the better of the start and end measurements.
- loader workers: DataLoader workers this row's step rate needs: ceil(img/s / per-worker img/s of
  the case's transform with the faster decoder).
- lever (lever table): one change against the hf-ssl baseline: ``foreach AdamW`` / ``for-loop AdamW``
  (baseline, for every implementation: fused AdamW where the kernel applies, as the hf-ssl trainer
  and transformers' Trainer build it), ``SDPA <backend>``
  (forced with ``sdpa_kernel``), ``channels-last`` (conv backbones), ``.item() per step`` (a host
  sync per step, as loops that log every step do), ``sdpa attention`` / ``eager attention`` /
  ``lean attention`` (each kernel the trainer's ``--attention auto`` does not pick: hf-ssl's baseline
  attends lean on CPU under bf16 and with SDPA otherwise; lean rows only under bf16; references keep
  SDPA), ``activation checkpointing`` (``checkpointing``: the trainer's ``--gradient_checkpointing``),
  ``torch.compile`` (``--compile``). first step s:
  the first step's seconds (compilation, for torch.compile).
- data table: images/s of one worker (one process, one torch thread) for each case's transform and
  decoder, and the workers a step of the given rates (``--target_images_per_second``) needs.
"""

from __future__ import annotations

import os

# Read before anything heavy is imported: the load the run found, not the one it makes.
_LOAD_AT_START = os.getloadavg()[0]
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler (CPU memory) is otherwise chatty on stderr
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


class _OneLineParser(argparse.ArgumentParser):
    """Bad input: one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _lightly_path(argv: list[str]) -> str | None:
    """``--lightly_path`` must be on sys.path before the case modules import their references."""
    for index, argument in enumerate(argv):
        if argument == "--lightly_path" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--lightly_path="):
            return argument.split("=", 1)[1]
    default = REPOSITORY / ".lightly"
    return str(default) if default.is_dir() else None


def parse_arguments(argv: list[str]):
    from cases import CASES, DEFAULT_SIZES, SIZES
    from steps import LEVER_NAMES, PRECISIONS, SDPA_BACKENDS
    from suite import MEMORY_MODES

    parser = _OneLineParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=list(CASES), default=list(CASES), help="methods to measure")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(DEFAULT_SIZES),
                        help="backbone sizes; each method runs at the ones it supports")
    parser.add_argument("--precisions", nargs="+", choices=(*PRECISIONS, "auto"), default=["auto"],
                        help="'auto': fp32, plus bf16 autocast where the device computes bf16 natively")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row before the rounds")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for the steps")
    parser.add_argument("--levers", nargs="*", choices=(*LEVER_NAMES, "none"), default=list(LEVER_NAMES),
                        help="hf-ssl lever rows to add next to the baseline ('none': none)")
    parser.add_argument("--sdpa_backends", nargs="+", choices=list(SDPA_BACKENDS), default=None,
                        help="backends of the 'sdpa' lever (default: math on CPU; flash efficient cudnn math on CUDA)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row per hf-ssl model (slow to compile)")
    parser.add_argument("--memory", choices=MEMORY_MODES, default="tensors", help="how peak memory is measured")
    parser.add_argument("--memory_steps", type=int, default=2, help="steps per row with --memory process")
    parser.add_argument("--skip_data", action="store_true", help="no data-pipeline measurements")
    parser.add_argument("--data_images", type=int, default=128, help="224-px JPEGs for the data measurements")
    parser.add_argument("--loader_workers", type=int, default=2, help="workers of the loader-stack row (0: skip it)")
    parser.add_argument("--loader_batch_size", type=int, default=32)
    parser.add_argument("--target_images_per_second", nargs="+", type=float, default=[1000.0, 3000.0],
                        help="step rates (a GPU's) to size DataLoader workers for in the data table")
    parser.add_argument("--matmul_seconds", type=float, default=1.0, help="seconds per matmul-rate measurement")
    parser.add_argument("--cpu_allocator", choices=("cached", "default"), default="cached",
                        help="cached: keep freed host memory for the next step, as the hf-ssl trainer does on CPU "
                             "(for every row, references included); default: glibc's own behaviour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lightly_path", default=None, help="folder lightly was installed into with pip --target")
    parser.add_argument("--output", default=str(REPOSITORY / "benchmarks" / "results"), help="results folder")
    parser.add_argument("--host_name", default=None, help="results file name (default: from the CPU / GPU model)")
    parser.add_argument("--force", action="store_true", help="run on a busy machine; the results are marked invalid")
    parser.add_argument("--memory_worker", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    for name in ("batch_size", "rounds", "steps", "warmup", "threads", "memory_steps", "data_images", "loader_batch_size"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(arguments, name)}")
    if arguments.batch_size < 2:
        parser.error("--batch_size must be >= 2 (batch statistics and in-batch negatives need two images)")
    if arguments.loader_workers < 0:
        parser.error(f"--loader_workers must be >= 0, got {arguments.loader_workers}")
    arguments.levers = [] if "none" in arguments.levers else arguments.levers
    return arguments


def resolve_precisions(requested: list[str], device) -> list[str]:
    """``auto`` -> fp32, plus bf16 where it is native: without AVX512-BF16 / AMX, CPU bf16 matmuls run
    on a fallback kernel (0.2-0.6 GFLOP/s measured on an AVX2 EPYC, 70x slower than fp32)."""
    from harness import bf16_is_native

    if "auto" not in requested:
        return list(dict.fromkeys(requested))
    return ["fp32", "bf16"] if bf16_is_native(device) else ["fp32"]


def _say(message: str) -> None:
    print(message, flush=True)


def _matmul_rates(device, seconds: float) -> dict:
    import torch
    from harness import matmul_rate

    rates = {"fp32": matmul_rate(device, torch.float32, seconds=seconds),
             "bf16": matmul_rate(device, torch.bfloat16, seconds=seconds)}
    return {**{dtype: rate["gflops"] for dtype, rate in rates.items()},
            "sides": {dtype: rate["side"] for dtype, rate in rates.items()}}


def _prepare_cases(arguments) -> tuple[list, list[dict]]:
    """``CaseInputs`` per (method, size) the method supports, and skipped rows for those it refuses."""
    from cases import CASES, SIZES, NotApplicable, prepare_case

    prepared, skipped = [], []
    for method in arguments.methods:
        case = CASES[method]
        for size_name in arguments.sizes:
            if size_name not in case.sizes:
                continue
            try:
                prepared.append(prepare_case(case, SIZES[size_name], arguments.batch_size, arguments.seed))
            except NotApplicable as error:
                skipped.append({"method": method, "size": size_name, "precision": "all", "implementation": "all",
                                "lever": "baseline", "status": "skipped", "reason": str(error)})
    return prepared, skipped


def _data_section(arguments, prepared: list) -> dict:
    """Per-worker decode + augment rates of every prepared case's transform, and the loader stack."""
    from cases import synthetic_caption, synthetic_image
    from data_rates import (
        JPEG_SIZE,
        jpeg_bytes,
        loader_stack_rate,
        per_worker_rates,
        write_jpeg_shards,
    )

    images = [synthetic_image(index, JPEG_SIZE, arguments.seed) for index in range(arguments.data_images)]
    encoded = [jpeg_bytes(image) for image in images]
    captions = [synthetic_caption(index) for index in range(arguments.data_images)]
    transforms = {f"{inputs.case.method} {inputs.size.name}": inputs.row_transform for inputs in prepared}
    import torch

    per_worker = per_worker_rates(transforms, encoded, captions, arguments.rounds, torch.device("cpu"),
                                  progress=lambda message: _say(f"[data] {message}"))
    section = {
        "jpeg": {"count": len(encoded), "size": JPEG_SIZE, "quality": 90,
                 "mean_kilobytes": sum(len(data) for data in encoded) / len(encoded) / 1024},
        "per_worker": per_worker,
        "target_images_per_second": arguments.target_images_per_second,
        "loader_stack": None,
    }
    if arguments.loader_workers > 0:
        with tempfile.TemporaryDirectory() as directory:
            files = write_jpeg_shards(Path(directory), images, number_of_shards=max(arguments.loader_workers, 2))
            section["loader_stack"] = loader_stack_rate(files, len(images), arguments.loader_workers,
                                                        arguments.loader_batch_size)
        _say(f"[data] loader stack: {section['loader_stack']['images_per_second']:.1f} img/s")
    return section


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lightly_path = _lightly_path(argv)
    if lightly_path:
        sys.path.insert(0, lightly_path)
    arguments = parse_arguments(argv)
    import torch
    from suite import memory_worker

    from hf_ssl.training.runtime import keep_freed_host_memory

    # Before any model exists, in memory workers too; off CPU, or off glibc, nothing changes.
    device = torch.device(arguments.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    allocator_cached = arguments.cpu_allocator == "cached" and keep_freed_host_memory(device)

    if arguments.memory_worker:
        print(json.dumps(memory_worker(json.loads(arguments.memory_worker))))
        return 0

    from harness import host_facts, host_slug, load_problem, load_snapshot

    problem = load_problem(_LOAD_AT_START)
    if problem is not None and not arguments.force:
        print(f"run.py: refusing to run: {problem} (above 0.5; wait for a quiet machine or pass --force)", file=sys.stderr)
        return 2
    if arguments.device == "cuda" and not torch.cuda.is_available():
        print("run.py: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(arguments.threads)
    arguments.precisions = resolve_precisions(arguments.precisions, device)

    from cases import CASES
    from report import (
        add_derived_columns,
        fastest_worker_rates,
        utilisation_reference,
        write_results,
    )
    from suite import SuiteOptions, measure_group

    import hf_ssl  # noqa: F401  (registers every method)

    started, started_at = time.perf_counter(), datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load = {"start": {**load_snapshot(), "load_average_before_imports": round(_LOAD_AT_START, 2)}}
    facts = host_facts(device)
    _say(f"host: {facts.get('gpu_name') or facts['cpu_model']}, load {_LOAD_AT_START:.2f}"
         + (f" -- {problem}, results marked invalid" if problem else ""))
    phases, phase_start = {}, time.perf_counter()

    def phase_done(name: str) -> None:
        nonlocal phase_start
        phases[name] = round(time.perf_counter() - phase_start, 1)
        phase_start = time.perf_counter()

    matmul = {"start": _matmul_rates(device, arguments.matmul_seconds)}
    _say(f"matmul GFLOP/s at start: {matmul['start']}")
    phase_done("matmul_start")
    prepared, rows = _prepare_cases(arguments)
    phase_done("prepare_cases")
    data = None if arguments.skip_data else _data_section(arguments, prepared)
    phase_done("data")
    options = SuiteOptions(
        device=device, batch_size=arguments.batch_size, rounds=arguments.rounds, steps=arguments.steps,
        warmup=arguments.warmup, levers=tuple(arguments.levers),
        sdpa_backends=tuple(arguments.sdpa_backends) if arguments.sdpa_backends else None, compile=arguments.compile,
        memory=arguments.memory, memory_steps=arguments.memory_steps, seed=arguments.seed, threads=arguments.threads,
        cpu_allocator=arguments.cpu_allocator,
    )
    for inputs in prepared:
        for precision in arguments.precisions:
            rows += measure_group(inputs, precision, options, _say)
    phase_done("training_steps")
    matmul["end"] = _matmul_rates(device, arguments.matmul_seconds)
    phase_done("matmul_end")
    load["end"] = load_snapshot()
    matmul["utilisation_reference"] = utilisation_reference(matmul, facts["bf16_native"])
    case_keys = {f"{inputs.case.method} {inputs.size.name}": (inputs.case.method, inputs.size.name) for inputs in prepared}
    worker_rates = fastest_worker_rates(data["per_worker"], case_keys) if data else {}
    add_derived_columns(rows, matmul["utilisation_reference"]["gflops"], worker_rates)
    results = {
        "suite": "hf-ssl benchmarks/run.py",
        "valid": problem is None,
        "invalid_reason": problem,
        "command": ["python", "benchmarks/run.py", *argv],
        "started_at": started_at,
        "wall_seconds": time.perf_counter() - started,
        "phase_seconds": phases,
        "settings": {**{key: value for key, value in vars(arguments).items() if key != "memory_worker"},
                     "device": device.type, "methods_known": list(CASES), "cpu_allocator_cached": allocator_cached},
        "host": facts,
        "load": load,
        "matmul_gflops": matmul,
        "data": data,
        "rows": rows,
    }
    name = arguments.host_name or host_slug(facts)
    json_path, markdown_path = write_results(results, Path(arguments.output), name)
    print(markdown_path.read_text())
    _say(f"wrote {json_path} and {markdown_path}")
    failed = [row for row in rows if row.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
