"""Does ``torch.compile`` pay in a real training run? Each method's run with ``--compile no`` and ``--compile yes``.

The isolated step (`benchmarks/run.py --compile`) says what compiling does to forward + backward +
optimizer; this study runs the whole trainer as a user does (its loader, logging and checkpoints
included) and reads the answer off the run's own log:

- compile seconds: how much longer the first logged window took than without compiling (inductor
  generates and builds its kernels there, once per input shape), with an empty inductor cache: a
  later run of the same model on the same machine reuses the cached kernels and compiles faster;
- steady img/s: the median of the logged windows after the first two, for both runs (with
  ``--repeats``, the median over the repeated pairs; the spread of the eager rates is the noise a
  speed-up is read against);
- break-even steps: compile seconds / the seconds each compiled step saves (none where it saves none);
- recompilations, graph breaks and frames that fell back to eager (``TORCH_LOGS``), and peak
  resident memory of the run's processes (DataLoader workers included).

The two runs of a method follow each other, in alternating order from one method to the next, so
a drift of the host's speed hits both alike. Run on a quiet machine (the study refuses a 1-minute
load average above 0.5, as `benchmarks/run.py` does).

    python benchmarks/compile_study.py                               # every method, the bundled run, 200 steps
    python benchmarks/compile_study.py --methods simclr mae --max_steps 400
    python benchmarks/compile_study.py --reduced                     # CI: keeps the script working

Writes ``<output_dir>/compile_study-<host>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from harness import host_facts, host_slug, load_problem, load_snapshot
from report import write_study

REPO = Path(__file__).resolve().parents[1]
# Methods whose run needs a flag of its own (distillation: --teacher).
NEEDS_FLAGS = ("distillation",)
DEFAULT_OUTPUT = REPO / "benchmarks" / "results"
# Windows left out of the steady rate: the first holds compilation, the second a shape a first step
# may not have had (DINO's local crops compile at their first use too).
UNSTEADY_WINDOWS = 2
# dynamo's log lines, counted per run (TORCH_LOGS="recompiles,graph_breaks").
LOG_PATTERNS = {
    "recompilations": re.compile(r"Recompiling function"),
    "graph_breaks": re.compile(r"Graph break (?:in user code|\(user stack suppressed)"),
    "eager_fallbacks": re.compile(r"WON'T CONVERT|Backend compiler .*failed|Unable to compile", re.IGNORECASE),
}


def parse_arguments(argv=None) -> argparse.Namespace:
    import torch

    from hf_ssl.recipes import available_methods

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=[m for m in available_methods() if m not in NEEDS_FLAGS],
                        choices=list(available_methods()),
                        help=f"default: every method but {', '.join(NEEDS_FLAGS)} (needs flags of its own: pass them with --extra)")
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1,
                        help="eager / compiled pairs per method (medians reported; their spread is the noise)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further trainer flags for every run (after everything else), e.g. --extra --model vit-tiny")
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "compile_study")
    parser.add_argument("--host_name", default=None, help="results file name (default: from the CPU model and core count)")
    parser.add_argument("--merge", action="store_true",
                        help="replace these methods' rows in an existing results file of this host, keeping the others")
    parser.add_argument("--force", action="store_true", help="run on a busy machine (the results are marked invalid)")
    parser.add_argument("--reduced", action="store_true", help="CI size: one method, 4 steps of batch 16")
    arguments = parser.parse_args(argv)
    if arguments.reduced:
        arguments.methods, arguments.max_steps, arguments.logging_steps = ["simmim"], 4, 1
        arguments.extra = ["--total_batch_size", "16", *arguments.extra]
    if arguments.max_steps < (UNSTEADY_WINDOWS + 1) * arguments.logging_steps and not arguments.reduced:
        parser.error(f"--max_steps must cover at least {UNSTEADY_WINDOWS + 1} logged windows of --logging_steps")
    arguments.device = torch.device("cpu")
    return arguments


def pretrain(method: str, compile_choice: str, arguments) -> dict:
    """One run in a fresh process; returns its wall seconds, peak memory and dynamo log counts."""
    run_dir = arguments.runs_dir / f"{method}-compile-{compile_choice}"
    command = [
        sys.executable, "-m", "hf_ssl.cli.pretrain", "--method", method, "--compile", compile_choice,
        "--max_steps", str(arguments.max_steps), "--logging_steps", str(arguments.logging_steps),
        "--save_steps", str(arguments.max_steps), "--report_protocols", "none", "--report_to", "none",
        "--output_dir", str(run_dir), "--overwrite_output_dir", *arguments.extra,
    ]
    # A cache of its own: every compiled run pays the full (cold) compile, not one a previous run warmed.
    cache = arguments.runs_dir / f"{method}-inductor-cache"
    shutil.rmtree(cache, ignore_errors=True)
    environment = {**os.environ, "TORCH_LOGS": "recompiles,graph_breaks", "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    with open(arguments.runs_dir / f"{method}-compile-{compile_choice}.log", "w+") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, env=environment)
        peak = 0
        while process.poll() is None:
            peak = max(peak, resident_bytes(process.pid))
            time.sleep(0.25)
        seconds = time.perf_counter() - started
        log.seek(0)
        output = log.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    counts = {name: len(pattern.findall(output)) for name, pattern in LOG_PATTERNS.items()}
    windows = logged_windows(run_dir, arguments.logging_steps)
    print(f"{method} --compile {compile_choice}: {seconds:.0f} s, steady {steady_rate(windows):.0f} img/s, {counts}",
          flush=True)
    return {"wall_seconds": seconds, "peak_resident_mib": peak / 2**20, "windows": windows, **counts}


def resident_bytes(pid: int) -> int:
    """Resident memory of a process and its children (DataLoader workers); 0 once it is gone."""
    try:
        process = psutil.Process(pid)
        return sum(member.memory_info().rss for member in [process, *process.children(recursive=True)])
    except psutil.Error:
        return 0


def logged_windows(run_dir: Path, logging_steps: int) -> list[dict]:
    """``[{"step", "images_per_second", "seconds"}]`` for each logged window of the run."""
    records = [json.loads(line) for line in (run_dir / "training_log.jsonl").read_text().splitlines() if line.strip()]
    windows, previous_images = [], 0
    for record in records:
        if "images_per_second" not in record:
            continue
        images = record["num_images_seen"] - previous_images
        previous_images = record["num_images_seen"]
        windows.append({"step": record["step"], "images_per_second": record["images_per_second"],
                        "seconds": images / record["images_per_second"]})
    return windows


def steady_rate(windows: list[dict]) -> float:
    steady = windows[UNSTEADY_WINDOWS:] or windows[-1:]
    return statistics.median(window["images_per_second"] for window in steady)


def compare(eager: list[dict], compiled: list[dict], images_per_step: float) -> dict:
    """Compile seconds, steady speed-up and break-even steps of the compiled runs against the eager ones.

    `eager` and `compiled` hold one run per repeat, the two runs of a repeat back to back. The host's
    speed drifts over minutes (the same eager run measured 274 and 403 img/s twenty minutes apart on
    a 2-core cloud host), so the speed-up is the median over repeats of each pair's own ratio, not a
    ratio of medians; ``eager_spread`` ((max - min) / median of the eager rates) shows the drift.
    """
    eager_rates = [steady_rate(run["windows"]) for run in eager]
    compiled_rates = [steady_rate(run["windows"]) for run in compiled]
    pair_speedups = [fast / slow for slow, fast in zip(eager_rates, compiled_rates)]
    eager_rate, speedup = statistics.median(eager_rates), statistics.median(pair_speedups)
    compile_seconds = (statistics.median(run["windows"][0]["seconds"] for run in compiled)
                       - statistics.median(run["windows"][0]["seconds"] for run in eager))
    saved_per_step = images_per_step / eager_rate - images_per_step / (eager_rate * speedup)
    return {
        "eager_images_per_second": eager_rate,
        "compiled_images_per_second": statistics.median(compiled_rates),
        "eager_rates": eager_rates,
        "compiled_rates": compiled_rates,
        "eager_spread": (max(eager_rates) - min(eager_rates)) / eager_rate,
        "pair_speedups": pair_speedups,
        "speedup": speedup,
        "compile_seconds": compile_seconds,
        "saved_seconds_per_step": saved_per_step,
        "break_even_steps": compile_seconds / saved_per_step if saved_per_step > 0 else None,
        "wall_seconds": {"eager": statistics.median(run["wall_seconds"] for run in eager),
                         "compiled": statistics.median(run["wall_seconds"] for run in compiled)},
        "peak_resident_mib": {"eager": max(run["peak_resident_mib"] for run in eager),
                              "compiled": max(run["peak_resident_mib"] for run in compiled)},
        **{name: max(run[name] for run in compiled) for name in LOG_PATTERNS},
    }


def collect(arguments) -> dict:
    arguments.runs_dir.mkdir(parents=True, exist_ok=True)
    load_at_start = load_snapshot()
    problem = load_problem(load_at_start["load_average"][0])
    if problem and not arguments.force and not arguments.reduced:
        raise SystemExit(f"compile_study.py: refusing to run: {problem} (pass --force to run anyway)")
    started = time.perf_counter()
    methods = {}
    for index, method in enumerate(arguments.methods):
        runs = {"no": [], "yes": []}
        try:
            for repeat in range(arguments.repeats):
                for choice in ("no", "yes") if (index + repeat) % 2 == 0 else ("yes", "no"):
                    runs[choice].append(pretrain(method, choice, arguments))
        except RuntimeError as error:  # one method failing is a row, not the end of the study
            print(f"{method}: {error}", flush=True)
            methods[method] = {"error": str(error)[-2000:]}
            continue
        arguments_file = arguments.runs_dir / f"{method}-compile-no" / "training_args.json"
        images_per_step = json.loads(arguments_file.read_text())["total_batch_size"]
        methods[method] = {**compare(runs["no"], runs["yes"], images_per_step), "runs": runs}
    return {
        "command": "python benchmarks/compile_study.py " + " ".join(sys.argv[1:]),
        "host": host_facts(arguments.device),
        "load_average": {"start": load_at_start, "end": load_snapshot()},
        "valid": not problem,
        "max_steps": arguments.max_steps,
        "logging_steps": arguments.logging_steps,
        "extra_flags": arguments.extra,
        "seconds": time.perf_counter() - started,
        "methods": methods,
    }


def merged(previous: dict, report: dict) -> dict:
    """`previous` with `report`'s method rows in place of its own; each row keeps the command, load and
    time of the run that measured it (``runs_of``)."""
    def run_facts(facts: dict) -> dict:
        return {key: facts[key] for key in ("command", "load_average", "valid", "seconds")}

    rows = {**previous["methods"], **report["methods"]}
    runs_of = {method: previous.get("runs_of", {}).get(method, run_facts(previous)) for method in previous["methods"]}
    runs_of.update({method: run_facts(report) for method in report["methods"]})
    return {**report, "methods": rows, "runs_of": runs_of, "valid": previous["valid"] and report["valid"],
            "command": f"{previous['command']}; then {report['command']}",
            "seconds": previous["seconds"] + report["seconds"]}


def markdown(report: dict) -> str:
    host = report["host"]
    lines = [
        f"# torch.compile in the trainer: {host['cpu_model']} ({host['torch_threads']} threads)",
        "",
        f"- Command: `{report['command']}`, {report['seconds']:.0f} s; {report['max_steps']} steps per run, "
        f"logged every {report['logging_steps']}; further flags: {' '.join(report['extra_flags']) or 'none'}.",
        f"- Host: {host['cpu_model']}, bf16 CPU flags {', '.join(host['cpu_bf16_flags']) or 'none'}; torch {host['torch']}, "
        f"transformers {host['transformers']}.",
        f"- Load average (1/5/15 min) at start {report['load_average']['start']['load_average']}, at end "
        f"{report['load_average']['end']['load_average']}"
        + (" (of the last run: `runs_of` in the JSON gives each row's run)" if "runs_of" in report else "")
        + ("" if report["valid"] else " (busy machine: timings not comparable)") + ".",
        f"- Steady img/s: median of the logged windows after the first {UNSTEADY_WINDOWS}. Compile s: the first "
        "window's extra seconds. Break-even: compile s / seconds saved per step. Eager spread: (max - min) / median "
        "of a method's eager rates (0 with one pair): how far the host's speed drifted. Speed-up: median over the "
        "pairs of compiled / eager, each pair run back to back.",
        "",
        "| method | pairs | eager img/s | eager spread | compiled img/s | speed-up (per pair) | compile s | break-even steps "
        "| recompilations | graph breaks | eager fallbacks | peak MiB eager / compiled | run s eager / compiled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, row in report["methods"].items():
        if "error" in row:
            lines.append(f"| {method} | failed: {row['error'].strip().splitlines()[-1][:200]} |" + " |" * 11)
            continue
        break_even = f"{row['break_even_steps']:.0f}" if row["break_even_steps"] is not None else "never"
        lines.append(
            f"| {method} | {len(row['eager_rates'])} | {row['eager_images_per_second']:.0f} | "
            f"{100 * row['eager_spread']:.0f} % | {row['compiled_images_per_second']:.0f} | "
            f"{row['speedup']:.2f}x ({', '.join(f'{ratio:.2f}' for ratio in row['pair_speedups'])}) | "
            f"{row['compile_seconds']:.0f} | {break_even} | {row['recompilations']} | "
            f"{row['graph_breaks']} | {row['eager_fallbacks']} | {row['peak_resident_mib']['eager']:.0f} / "
            f"{row['peak_resident_mib']['compiled']:.0f} | {row['wall_seconds']['eager']:.0f} / "
            f"{row['wall_seconds']['compiled']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict):
    import matplotlib.pyplot as plt

    methods = [method for method, row in report["methods"].items() if "error" not in row]
    figure, (speed, cost) = plt.subplots(1, 2, figsize=(11, 0.45 * len(methods) + 1.8))
    speed.barh(methods, [report["methods"][m]["speedup"] for m in methods], color="tab:blue")
    speed.axvline(1.0, color="black", linewidth=1)
    speed.set_xlabel("steady img/s, compiled / eager")
    cost.barh(methods, [report["methods"][m]["compile_seconds"] for m in methods], color="tab:orange")
    cost.set_xlabel("compile seconds (first window's extra time)")
    speed.invert_yaxis()
    cost.invert_yaxis()
    figure.suptitle("torch.compile in the hf-ssl trainer")
    return figure


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    report = collect(arguments)
    name = "compile_study-" + (arguments.host_name or host_slug(report["host"]))
    previous = arguments.output_dir / f"{name}.json"
    if arguments.merge and previous.exists():
        report = merged(json.loads(previous.read_text()), report)
    write_study(arguments.output_dir, name, report, markdown(report), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
