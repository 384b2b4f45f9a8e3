"""The sample-efficiency study of SplitMask (El-Nouby et al. 2021, arXiv:2112.10740), at small scale.

The paper's protocol: pre-train each method on a fraction of the data with the number of
iterations held fixed, then evaluate every encoder the same way on the same labelled split. The
paper's claim: masked image modeling (SplitMask, BEiT) holds its accuracy as the pre-training data
shrinks, while a joint-embedding method (DINO) degrades. This script measures it on the bundled
scenes (or any dataset) and states what holds and what does not.

    python benchmarks/sample_efficiency.py                                   # the configuration README quotes
    python benchmarks/sample_efficiency.py --methods splitmask dino --seeds 0
    python benchmarks/sample_efficiency.py --reduced                         # CI: keeps the script working

Every run: the budget of `benchmarks/quality.py` (whose 100 % runs it shares through ``--runs_dir``),
the same evaluation plan, and the baselines that need no pre-training data (random init, raw
pixels, supervised). Writes ``<output_dir>/sample_efficiency.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretraining_runs import BASELINE_ROWS, PLAN, REPO, Budget, Run, configuration, evaluation_plan, result_key, run_study
from report import write_study

DEFAULT_OUTPUT = REPO / "benchmarks" / "results"
MASKED_IMAGE_METHODS = ("splitmask", "beit", "mae", "simmim")
SHOWN = ("knn", "linear", "linear-10%", "finetune-10%")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["splitmask", "beit", "mae", "dino", "simclr"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0], help="fractions of the pre-training split")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, default=1000, help="optimizer steps of every run (held fixed)")
    parser.add_argument("--total_batch_size", type=int, default=64)
    parser.add_argument("--model", default="vit-micro", help="the backbone of every run (the masked methods need a ViT)")
    parser.add_argument("--image_size", type=int, default=48)
    parser.add_argument("--dataset_name", default="digit-scenes")
    parser.add_argument("--finetune_max_steps", type=int, default=None, help="cap on fine-tuning steps (default: the protocol's)")
    parser.add_argument("--eval_max_samples", type=int, default=None, help="cap on labelled images per split (default: all)")
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "pretraining-studies")
    parser.add_argument("--reduced", action="store_true", help="CI size: splitmask + dino, fractions 0.1 and 1, 4 steps")
    arguments = parser.parse_args(argv)
    if arguments.reduced:
        arguments.methods, arguments.fractions, arguments.seeds = ["splitmask", "dino"], [0.1, 1.0], [0]
        arguments.max_steps, arguments.total_batch_size, arguments.image_size = 4, 16, 32
        arguments.finetune_max_steps, arguments.eval_max_samples = 4, 300
    return arguments


def collect(arguments) -> dict:
    budget = Budget(arguments.max_steps, arguments.total_batch_size, arguments.image_size, arguments.dataset_name,
                    arguments.finetune_max_steps, arguments.eval_max_samples)
    runs = [Run(method, arguments.model, seed, fraction) for method in arguments.methods
            for fraction in arguments.fractions for seed in arguments.seeds]
    rows = run_study(runs, budget, evaluation_plan(PLAN), arguments.runs_dir,
                     row_name=lambda run: f"{run.method} @ {run.fraction:g}")
    rows = {row.replace(f" ({arguments.model})", ""): values for row, values in rows.items()}
    report = {"configuration": configuration(arguments), "results": rows}
    report["verdict"] = verdict(report)
    return report


def change(report: dict, method: str, key: str) -> dict | None:
    """The change of `key` from the largest to the smallest fraction, and its noise (two standard
    errors of a difference of seed means)."""
    fractions = sorted(report["configuration"]["fractions"])
    small, large = (report["results"].get(f"{method} @ {fraction:g}", {}).get(key) for fraction in (fractions[0], fractions[-1]))
    if small is None or large is None:
        return None
    noise = 2 * ((small["std"] ** 2 / small["runs"]) + (large["std"] ** 2 / large["runs"])) ** 0.5
    return {"from": large["mean"], "to": small["mean"], "change": small["mean"] - large["mean"], "noise": noise}


def verdict(report: dict) -> list[str]:
    """One line per method (does its linear probe hold as the data shrinks?) and the paper's claim checked."""
    fractions = sorted(report["configuration"]["fractions"])
    lines, holds = [], {}
    for method in report["configuration"]["methods"]:
        measured = change(report, method, "linear")
        if measured is None:
            continue
        holds[method] = measured["change"] >= -measured["noise"]
        lines.append(f"{method}: linear probe {100 * measured['from']:.1f} % with {fractions[-1]:g} of the data -> "
                     f"{100 * measured['to']:.1f} % with {fractions[0]:g} ({100 * measured['change']:+.1f} points, noise "
                     f"{100 * measured['noise']:.1f}): {'holds' if holds[method] else 'degrades'}")
    masked = [method for method in holds if method in MASKED_IMAGE_METHODS]
    if masked and "dino" in holds:
        agrees = all(holds[method] for method in masked) and not holds["dino"]
        lines.append(f"The paper's claim (masked image modeling holds, DINO degrades) "
                     f"{'holds' if agrees else 'does NOT hold'} here: "
                     + ", ".join(f"{method} {'holds' if holds[method] else 'degrades'}" for method in [*masked, "dino"]) + ".")
    return lines


def markdown(report: dict) -> str:
    configuration = report["configuration"]
    settings = list(dict.fromkeys(setting for values in PLAN.values() for setting in values))
    keys = [key for key in (result_key(protocol, setting) for protocol in PLAN for setting in settings)
            if any(key in columns for columns in report["results"].values())]
    lines = [
        "# Sample efficiency: pre-training data fraction vs downstream accuracy",
        "",
        f"Generated by `benchmarks/sample_efficiency.py`: {configuration['model']} at {configuration['image_size']} px, "
        f"{configuration['max_steps']} steps of batch {configuration['total_batch_size']} for every run (iterations held "
        f"fixed), pre-training on fractions of `{configuration['dataset_name']}`'s training split, seeds "
        f"{configuration['seeds']}; top-1 accuracy (%) on the test split, mean ± std over seeds.",
        "",
        "| pre-training | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for row, columns in report["results"].items():
        cells = ["-" if columns.get(key) is None else f"{100 * columns[key]['mean']:.1f} ± {100 * columns[key]['std']:.1f}"
                 for key in keys]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "random init: the same encoder untrained, frozen (its fine-tuning is the supervised model). raw "
              "pixels: the centred pixels as features (fine-tuning: the linear head on them). supervised: the same "
              "architecture trained from random init with the column's labels.", "", "## Verdict", ""]
    lines += [f"- {line}" for line in report["verdict"]]
    return "\n".join(lines) + "\n"


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configuration = report["configuration"]
    fractions = configuration["fractions"]
    figure, axes = plt.subplots(1, len(SHOWN), figsize=(4.2 * len(SHOWN), 3.6), squeeze=False)
    for axis, key in zip(axes[0], SHOWN):
        for method in configuration["methods"]:
            values = [report["results"].get(f"{method} @ {fraction:g}", {}).get(key) for fraction in fractions]
            if all(value is None for value in values):
                continue
            axis.errorbar(fractions, [100 * v["mean"] if v else float("nan") for v in values],
                          yerr=[100 * v["std"] if v else 0.0 for v in values], marker="o", capsize=3, label=method)
        for reference, style in zip(BASELINE_ROWS, (":", "-.", "--")):
            value = report["results"].get(reference, {}).get(key)
            if value is not None:
                axis.axhline(100 * value["mean"], linestyle=style, color="grey", label=reference)
        axis.set_xscale("log")
        axis.set_xlabel("fraction of pre-training data")
        axis.set_ylabel("top-1 accuracy (%)")
        axis.set_title(key)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"Sample efficiency on {configuration['dataset_name']} ({configuration['max_steps']} steps per run)")
    return figure


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    report = collect(arguments)
    write_study(arguments.output_dir, "sample_efficiency", report, markdown(report), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
