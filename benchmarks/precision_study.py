"""Does bf16 autocast change what pre-training learns? fp32 and bf16 runs of the same jobs, side by side.

`--mixed_precision auto` (the trainer's default) picks bf16 autocast where the hardware computes
bf16 natively. This study runs the same pre-training (same seed: same initial weights, data order
and masks) once per precision, for several seeds, and compares what a user reads: the loss curve
and the kNN accuracy of the encoder. The seeds give the noise: a precision effect counts only when
it is larger than the spread between seeds of one precision.

    python benchmarks/precision_study.py                       # the bundled run (SplitMask, digits), 3 seeds
    python benchmarks/precision_study.py --methods splitmask dino --dataset_name digit-scenes --image_size 48
    python benchmarks/precision_study.py --reduced             # CI: keeps the script working

On a CPU without native bf16 (no AVX512-BF16 / AMX) bf16 is emulated: the numbers still hold,
only slowly; the report records which it was. Writes ``<output_dir>/precision_study.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from report import write_study

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results"
PRECISION_NAMES = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
# Loss "at the end": the mean of the last fifth of the logged losses (one logged loss is one batch's).
FINAL_FRACTION = 0.2


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["splitmask"], help="registered methods to pre-train")
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=sorted(PRECISION_NAMES),
                        help="--mixed_precision values to compare; the first is the reference")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    # SplitMask on the plain digits (the bundled default run before the scenes became the default).
    parser.add_argument("--max_steps", type=int, default=1200)
    parser.add_argument("--total_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--model", default="vit-micro")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--dataset_name", default="digits", help="pre-training and kNN data (default: the bundled digits)")
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "precision_study")
    parser.add_argument("--reduced", action="store_true", help="CI size: one method, two seeds, 6 steps")
    arguments = parser.parse_args(argv)
    if len(set(arguments.precisions)) < 2:
        parser.error("--precisions needs at least two different values to compare")
    if len(set(arguments.seeds)) < 2:
        parser.error("--seeds needs at least two seeds: their spread is the noise a precision effect is measured against")
    if arguments.reduced:
        arguments.methods, arguments.seeds = ["splitmask"], [0, 1]
        arguments.max_steps, arguments.total_batch_size, arguments.logging_steps = 6, 16, 1
    return arguments


def pretrain(method: str, precision: str, seed: int, arguments) -> tuple[Path, float]:
    """One pre-training run in a fresh process (as a user runs it); returns its run folder and seconds."""
    run_dir = arguments.runs_dir / f"{method}-{PRECISION_NAMES[precision]}-seed{seed}"
    command = [
        sys.executable, "-m", "hf_ssl.cli.pretrain", "--method", method, "--model", arguments.model,
        "--image_size", str(arguments.image_size), "--max_steps", str(arguments.max_steps),
        "--total_batch_size", str(arguments.total_batch_size), "--learning_rate", str(arguments.learning_rate),
        "--seed", str(seed), "--mixed_precision", precision, "--logging_steps", str(arguments.logging_steps),
        "--save_steps", str(arguments.max_steps), "--report_protocols", "none", "--report_to", "none",
        "--output_dir", str(run_dir), "--overwrite_output_dir",
    ]
    if arguments.dataset_name is not None:
        command += ["--dataset_name", arguments.dataset_name]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    print(f"pre-trained {method} in {PRECISION_NAMES[precision]}, seed {seed}, in {seconds:.0f} s", flush=True)
    return run_dir, seconds


def logged_losses(run_dir: Path) -> tuple[list[int], list[float]]:
    records = [json.loads(line) for line in (run_dir / "training_log.jsonl").read_text().splitlines() if line.strip()]
    records = [record for record in records if "loss" in record]
    return [record["step"] for record in records], [record["loss"] for record in records]


def final_loss(losses: list[float]) -> float:
    return statistics.fmean(losses[-max(1, math.ceil(FINAL_FRACTION * len(losses))):])


def knn_accuracy(run_dir: Path, arguments, seed: int, baselines: tuple[str, ...] = ()) -> dict:
    from hf_ssl.eval import evaluate_model
    from hf_ssl.eval.data import DataSelection

    return evaluate_model(run_dir, protocols=("knn",), data=DataSelection(arguments.dataset_name), baselines=baselines,
                          seed=seed)["knn"]


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def compare(reference: list[float], other: list[float]) -> dict:
    """The paired difference (same seed) of `other` against `reference`, next to the noise.

    Noise: the spread between seeds, pooled over both precisions, ``s = sqrt((s_ref^2 + s_other^2) / 2)``.
    ``within_noise``: the mean difference is at most two standard errors of a difference of two
    seed-means, ``2 * sqrt(2 / n) * s``.
    """
    differences = [b - a for a, b in zip(reference, other)]
    noise = math.sqrt((statistics.variance(reference) + statistics.variance(other)) / 2)
    bound = 2 * math.sqrt(2 / len(reference)) * noise
    mean_difference = statistics.fmean(differences)
    return {"mean_difference": mean_difference, "paired_differences": differences, "seed_std": noise,
            "noise_bound": bound, "within_noise": abs(mean_difference) <= bound}


def collect(arguments) -> dict:
    from hf_ssl.training.runtime import default_mixed_precision

    load_average_at_start = os.getloadavg()[0]
    reference_precision = arguments.precisions[0]
    methods: dict[str, dict] = {}
    baselines: dict[str, list[float]] = {}
    for method in arguments.methods:
        runs: dict[str, dict[str, list]] = {precision: {"knn": [], "final_loss": [], "seconds": [], "curves": []}
                                            for precision in arguments.precisions}
        for seed in arguments.seeds:
            for precision in arguments.precisions:  # interleaved: a drift of the machine hits every precision alike
                run_dir, seconds = pretrain(method, precision, seed, arguments)
                steps, losses = logged_losses(run_dir)
                wanted = ("random_init", "raw_pixels") if method == arguments.methods[0] and precision == reference_precision else ()
                knn = knn_accuracy(run_dir, arguments, seed, wanted)
                for baseline, accuracy in knn.get("baselines", {}).items():
                    baselines.setdefault(baseline, []).append(accuracy)
                record = runs[precision]
                record["knn"].append(knn["accuracy"])
                record["final_loss"].append(final_loss(losses))
                record["seconds"].append(seconds)
                record["curves"].append({"seed": seed, "steps": steps, "losses": losses})
        summary = {precision: {"knn": spread(record["knn"]), "final_loss": spread(record["final_loss"]),
                               "seconds": spread(record["seconds"]), "curves": record["curves"]}
                   for precision, record in runs.items()}
        comparisons = {precision: {"knn": compare(runs[reference_precision]["knn"], runs[precision]["knn"]),
                                   "final_loss": compare(runs[reference_precision]["final_loss"], runs[precision]["final_loss"])}
                       for precision in arguments.precisions[1:]}
        methods[method] = {"precisions": summary, "against_reference": comparisons}
    return {
        "configuration": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(arguments).items()},
        "host_bf16_native": default_mixed_precision() == "bf16",
        # Run times (JSON only) are wall-clock seconds of whole runs, not a benchmark: the load says how quiet it was.
        "load_average_at_start": load_average_at_start,
        "reference_precision": reference_precision,
        "methods": methods,
        "baselines": {name: spread(values) for name, values in baselines.items()},
    }


def markdown(report: dict) -> str:
    configuration = report["configuration"]
    reference = PRECISION_NAMES[report["reference_precision"]]
    data = configuration["dataset_name"] or "the bundled digits"
    lines = [
        "# Mixed precision: does bf16 change what pre-training learns?",
        "",
        f"Generated by `benchmarks/precision_study.py`: {configuration['model']} at {configuration['image_size']} px on "
        f"{data}, {configuration['max_steps']} steps of batch {configuration['total_batch_size']} (lr "
        f"{configuration['learning_rate']:g}), seeds {configuration['seeds']}; each seed runs once per precision "
        f"(same initial weights, data order and masks). bf16 {'native' if report['host_bf16_native'] else 'EMULATED'} on "
        f"this host. Final loss: mean of the last {FINAL_FRACTION:.0%} of the logged losses. kNN: top-1 (k=20) on the "
        "test split. Mean ± std over seeds.",
        "",
        "| method | precision | final loss | kNN top-1 |",
        "|---|---|---:|---:|",
    ]
    for method, result in report["methods"].items():
        for precision, summary in result["precisions"].items():
            lines.append(
                f"| {method} | {PRECISION_NAMES[precision]} | {summary['final_loss']['mean']:.4f} ± {summary['final_loss']['std']:.4f} "
                f"| {100 * summary['knn']['mean']:.1f} ± {100 * summary['knn']['std']:.1f} |")
    for name, values in report["baselines"].items():
        lines.append(f"| {name.replace('_', ' ')} | - | - | {100 * values['mean']:.1f} ± {100 * values['std']:.1f} |")
    lines += ["", f"Paired differences against {reference} (same seed), and the noise bound: two standard errors of a "
              "difference of seed-means, 2·sqrt(2/n)·s, s the std over seeds pooled over both precisions.", "",
              "| method | precision | Δ final loss | bound | Δ kNN (points) | bound | within noise |", "|---|---|---:|---:|---:|---:|---|"]
    for method, result in report["methods"].items():
        for precision, comparison in result["against_reference"].items():
            loss, knn = comparison["final_loss"], comparison["knn"]
            verdict = "yes" if loss["within_noise"] and knn["within_noise"] else "NO"
            lines.append(f"| {method} | {PRECISION_NAMES[precision]} | {loss['mean_difference']:+.4f} | {loss['noise_bound']:.4f} "
                         f"| {100 * knn['mean_difference']:+.1f} | {100 * knn['noise_bound']:.1f} | {verdict} |")
    return "\n".join(lines) + "\n"


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report["methods"]
    figure, axes = plt.subplots(len(methods), 2, figsize=(10, 3.6 * len(methods)), squeeze=False,
                                gridspec_kw={"width_ratios": [3, 1]})
    colours = {"no": "tab:blue", "bf16": "tab:orange", "fp16": "tab:green"}
    for (curve_axis, knn_axis), (method, result) in zip(axes, methods.items()):
        for position, (precision, summary) in enumerate(result["precisions"].items()):
            name, colour = PRECISION_NAMES[precision], colours[precision]
            for index, curve in enumerate(summary["curves"]):
                curve_axis.plot(curve["steps"], curve["losses"], color=colour, alpha=0.55, linewidth=0.9,
                                label=name if index == 0 else None)
            values = [100 * value for value in summary["knn"]["values"]]
            knn_axis.scatter([position] * len(values), values, color=colour, zorder=3)
            knn_axis.errorbar([position], [statistics.fmean(values)], yerr=[100 * summary["knn"]["std"]],
                              color="black", capsize=6, marker="_", markersize=18)
        for (baseline, values), style in zip(report["baselines"].items(), (":", "-.")):
            knn_axis.axhline(100 * values["mean"], color="grey", linestyle=style, label=baseline.replace("_", " "))
        curve_axis.set_xlabel("step")
        curve_axis.set_ylabel("training loss (one batch)")
        curve_axis.set_title(f"{method}: loss, one line per seed")
        curve_axis.legend()
        curve_axis.grid(alpha=0.3)
        knn_axis.set_xticks(range(len(result["precisions"])), [PRECISION_NAMES[p] for p in result["precisions"]])
        knn_axis.set_xlim(-0.6, len(result["precisions"]) - 0.4)
        knn_axis.set_ylabel("kNN top-1 (%)")
        knn_axis.set_title("kNN, one dot per seed")
        knn_axis.legend(fontsize=7)
        knn_axis.grid(alpha=0.3)
    return figure


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    report = collect(arguments)
    write_study(arguments.output_dir, "precision_study", report, markdown(report), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
