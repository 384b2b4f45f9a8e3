"""The sample-efficiency study of SplitMask (El-Nouby et al. 2021, arXiv:2112.10740), at small scale.

The paper's protocol: pre-train each method on a fraction of the data with the number of
iterations held fixed, then evaluate every encoder the same way on the same labelled split. The
paper's claim: masked image modeling (SplitMask, BEiT) holds its accuracy as the pre-training data
shrinks, while a joint-embedding method (DINO) drops. This script measures it on the bundled
data (or any dataset) and reports what it finds, whether it agrees or not.

    python benchmarks/sample_efficiency.py                                   # the configuration README quotes
    python benchmarks/sample_efficiency.py --methods splitmask beit dino mae --seeds 0 1 2
    python benchmarks/sample_efficiency.py --dataset_name my-org/images --eval_dataset_name my-org/labelled \\
        --model vit-small --image_size 224 --max_steps 20000
    python benchmarks/sample_efficiency.py --reduced                         # CI: keeps the script working

Rows: each pre-training method x data fraction (mean and std over seeds), plus two references
that need no pre-training data: "random init" (the same encoder untrained: kNN and linear probe
on frozen random features) and "supervised" (the same architecture trained from random init with
the labels: the fine-tuning protocol without pre-training). Columns: kNN (DINO protocol), linear
probe and fine-tuning, for each label setting. Writes ``<output_dir>/sample_efficiency.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from report import write_study

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results"
PROTOCOLS = ("knn", "linear", "finetune")
BASELINES = ("random_init", "raw_pixels", "supervised")
# Rows of the baselines; the supervised model is a fine-tuning result, so it fills the fine-tuning
# column only (the random-init encoder's fine-tuning IS the supervised model).
BASELINE_ROWS = {"random_init": "random init", "raw_pixels": "raw pixels", "supervised": "supervised"}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["splitmask", "beit", "dino"], help="registered methods to pre-train")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0], help="fractions of the pre-training split")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--max_steps", type=int, default=600, help="optimizer steps of every pre-training run (held fixed)")
    parser.add_argument("--total_batch_size", type=int, default=64)
    parser.add_argument("--model", default="vit-micro")
    parser.add_argument("--image_size", type=int, default=48)
    parser.add_argument("--dataset_name", default="digit-scenes", help="pre-training data (default: the bundled scenes)")
    parser.add_argument("--eval_dataset_name", default=None, help="labelled data with train/test splits (default: --dataset_name)")
    parser.add_argument("--label_settings", nargs="+", default=["all", "10%"])
    parser.add_argument("--finetune_epochs", type=int, default=10)
    parser.add_argument("--linear_epochs", type=int, default=100)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "sample_efficiency")
    parser.add_argument("--reduced", action="store_true",
                        help="CI size: splitmask + dino, fractions 0.1 and 1, one seed, 4 steps, no fine-tuning epochs to speak of")
    arguments = parser.parse_args(argv)
    if arguments.reduced:
        arguments.methods, arguments.fractions, arguments.seeds = ["splitmask", "dino"], [0.1, 1.0], [0]
        arguments.max_steps, arguments.total_batch_size, arguments.image_size = 4, 16, 32
        arguments.label_settings, arguments.finetune_epochs, arguments.linear_epochs = ["all"], 1, 5
    return arguments


def training_size(dataset_name: str | None) -> int:
    from hf_ssl.data import load_image_dataset

    return len(load_image_dataset(dataset_name, split="train"))


def pretrain(method: str, fraction: float, seed: int, arguments, number_of_rows: int) -> Path:
    """One pre-training run in a fresh process (as a user runs it); returns its run folder."""
    rows = max(arguments.total_batch_size, math.ceil(fraction * number_of_rows))
    run_dir = arguments.runs_dir / f"{method}-fraction{fraction:g}-seed{seed}"
    command = [
        sys.executable, "-m", "hf_ssl.cli.pretrain", "--method", method, "--model", arguments.model,
        "--image_size", str(arguments.image_size), "--dataset_name", arguments.dataset_name,
        "--max_train_samples", str(rows), "--max_steps", str(arguments.max_steps),
        "--total_batch_size", str(arguments.total_batch_size), "--seed", str(seed), "--save_steps", str(arguments.max_steps),
        "--knn_evaluation", "false", "--report_to", "none", "--output_dir", str(run_dir), "--overwrite_output_dir",
    ]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    print(f"pre-trained {method} on {rows} rows (fraction {fraction:g}, seed {seed}) in {time.perf_counter() - started:.0f} s",
          flush=True)
    return run_dir


def evaluate(run_dir: Path, arguments, seed: int, baselines: tuple[str, ...] = ()) -> dict:
    """kNN, linear probe and fine-tuning of the run's encoder (and, on request, its baselines)."""
    from hf_ssl.eval import evaluate_model

    return evaluate_model(
        run_dir, protocols=PROTOCOLS, dataset_name=arguments.eval_dataset_name or arguments.dataset_name,
        label_settings=arguments.label_settings, linear_epochs=arguments.linear_epochs,
        finetune_epochs=arguments.finetune_epochs, baselines=baselines, seed=seed,
    )


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "runs": len(values)}


def collect(arguments) -> dict:
    number_of_rows = training_size(arguments.dataset_name)
    measurements: dict[str, dict[str, list[float]]] = {}

    def record(row: str, results: dict) -> None:
        for key, result in results.items():
            measurements.setdefault(row, {}).setdefault(key, []).append(result["accuracy"])

    seeds_with_baselines: set[int] = set()
    for method in arguments.methods:
        for fraction in arguments.fractions:
            for seed in arguments.seeds:
                run_dir = pretrain(method, fraction, seed, arguments, number_of_rows)
                # The baselines need no pre-training data: measured once per seed, next to the first run.
                with_baselines = seed not in seeds_with_baselines
                seeds_with_baselines.add(seed)
                results = evaluate(run_dir, arguments, seed, BASELINES if with_baselines else ())
                record(f"{method} @ {fraction:g}", results)
                if with_baselines:
                    for baseline, row in BASELINE_ROWS.items():
                        record(row, {key: {"accuracy": result["baselines"][baseline]} for key, result in results.items()
                                     if baseline in result.get("baselines", {})
                                     and key.startswith("finetune") == (baseline == "supervised")})
    return {
        "configuration": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(arguments).items()},
        "pretraining_rows": number_of_rows,
        "results": {row: {key: summarise(values) for key, values in columns.items()} for row, columns in measurements.items()},
    }


def column_keys(label_settings: list[str]) -> list[str]:
    return [protocol if setting == "all" else f"{protocol}-{setting}" for setting in label_settings for protocol in PROTOCOLS]


def markdown(report: dict) -> str:
    configuration = report["configuration"]
    keys = column_keys(configuration["label_settings"])
    lines = [
        "# Sample efficiency: pre-training data fraction vs downstream accuracy",
        "",
        f"Generated by `benchmarks/sample_efficiency.py`: {configuration['model']} at {configuration['image_size']} px, "
        f"{configuration['max_steps']} steps of batch {configuration['total_batch_size']} for every run (iterations held "
        f"fixed), pre-training on fractions of {report['pretraining_rows']} images of `{configuration['dataset_name']}`, "
        f"seeds {configuration['seeds']}; top-1 accuracy (%) on the test split, mean ± std over seeds.",
        "",
        "| pre-training | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for row, columns in report["results"].items():
        cells = []
        for key in keys:
            value = columns.get(key)
            cells.append("-" if value is None else f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Random init: the same encoder untrained, frozen. Raw pixels: the centred pixels themselves as "
              "features (same kNN / probe). Supervised: the same architecture trained from random init with the labels "
              "(the fine-tuning protocol with no pre-training)."]
    return "\n".join(lines) + "\n"


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configuration = report["configuration"]
    fractions = configuration["fractions"]
    figure, axes = plt.subplots(1, len(PROTOCOLS), figsize=(4.2 * len(PROTOCOLS), 3.6), squeeze=False)
    for axis, protocol in zip(axes[0], PROTOCOLS):
        for method in configuration["methods"]:
            rows = [report["results"].get(f"{method} @ {fraction:g}", {}).get(protocol) for fraction in fractions]
            if all(row is None for row in rows):
                continue
            means = [100 * row["mean"] if row else float("nan") for row in rows]
            errors = [100 * row["std"] if row else 0.0 for row in rows]
            axis.errorbar(fractions, means, yerr=errors, marker="o", capsize=3, label=method)
        for reference, style in (("random init", ":"), ("raw pixels", "-."), ("supervised", "--")):
            value = report["results"].get(reference, {}).get(protocol)
            if value is not None:
                axis.axhline(100 * value["mean"], linestyle=style, color="grey", label=reference)
        axis.set_xscale("log")
        axis.set_xlabel("fraction of pre-training data")
        axis.set_ylabel("top-1 accuracy (%)")
        axis.set_title({"knn": "k-NN", "linear": "linear probe", "finetune": "fine-tuning"}[protocol])
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"Sample efficiency on {configuration['dataset_name']} ({configuration['max_steps']} steps per run)")
    return figure


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    report = collect(arguments)
    write_study(arguments.output_dir, "sample_efficiency", report, markdown(report), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
