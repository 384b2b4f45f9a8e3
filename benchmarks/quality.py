"""Which method for my data? Every registered method pre-trained on the bundled scenes with the same
budget, on the small-image ViT and on a small conv net, evaluated with every protocol next to its
baselines, over several seeds.

    python benchmarks/quality.py                                  # the configuration README quotes (hours on 2 cores)
    python benchmarks/quality.py --methods simclr vicreg --backbones resnet-micro --seeds 0
    python benchmarks/quality.py --methods distillation simclr --backbones resnet-nano resnet-micro --seeds 0
    python benchmarks/quality.py --reduced                        # CI: keeps the script working

Every run: the same steps x batch, the method's own (small-image) recipe for everything else. Every
encoder: k-NN and the validated linear probe with all labels, the probe with 10 %, 1 % and one
label per class, fine-tuning with 10 % and one label per class (early-stopped on a validation part
of the labelled split), zero-shot for the image-text model. Baselines, per backbone and seed: the
same encoder untrained (random init), the raw pixels, and the supervised model (the same
architecture trained from random init with the row's labels). Methods that mask ViT patches have
no conv-net row. A distillation run distils the run of ``--teacher METHOD:BACKBONE`` with the same
seed and budget (pre-trained first and measured too) into each other backbone. Writes ``<output_dir>/quality.{json,md,png}``; an interrupted run resumes from
``<runs_dir>/results.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretraining_runs import BASELINE_ROWS as BASELINES
from pretraining_runs import DENSE_PLAN, PLAN, REPO, Budget, Run, configuration, evaluation_plan, result_key, run_study
from report import write_study

DEFAULT_OUTPUT = REPO / "benchmarks" / "results"
BACKBONES = ("vit-micro", "resnet-micro")


def shipped_methods() -> list[str]:
    from hf_ssl.recipes import available_methods, get_recipe

    return [method for method in available_methods() if type(get_recipe(method)).__module__.startswith("hf_ssl.")]


def supports(method: str, backbone: str) -> bool:
    from hf_ssl.backbones import resolve_backbone
    from hf_ssl.recipes import get_recipe

    recipe = get_recipe(method)
    return "any" in recipe.supported_backbones or resolve_backbone(backbone, 48).family in recipe.supported_backbones


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=None, help="registered methods (default: all of hf-ssl's)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, default=1000, help="optimizer steps of every run")
    parser.add_argument("--total_batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=48)
    parser.add_argument("--dataset_name", default="digit-scenes")
    parser.add_argument("--finetune_max_steps", type=int, default=None, help="cap on fine-tuning steps (default: the protocol's)")
    parser.add_argument("--eval_max_samples", type=int, default=None, help="cap on labelled images per split (default: all)")
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--teacher", default="simclr:resnet-micro",
                        help="METHOD:BACKBONE whose run (same seed and budget) the distillation runs distil")
    parser.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "pretraining-studies",
                        help="run folders and results.json (shared with sample_efficiency.py: a run is measured once)")
    parser.add_argument("--reduced", action="store_true", help="CI size: SimCLR, SplitMask and a distillation of the SimCLR run, one seed, a few steps")
    arguments = parser.parse_args(argv)
    if arguments.reduced:
        arguments.methods = arguments.methods or ["simclr", "splitmask", "distillation"]
        arguments.seeds, arguments.max_steps, arguments.total_batch_size = [0], 4, 16
        arguments.image_size, arguments.finetune_max_steps, arguments.eval_max_samples = 32, 4, 300
    arguments.methods = arguments.methods or shipped_methods()
    return arguments


def collect(arguments) -> dict:
    budget = Budget(arguments.max_steps, arguments.total_batch_size, arguments.image_size, arguments.dataset_name,
                    arguments.finetune_max_steps, arguments.eval_max_samples)
    plan = evaluation_plan(PLAN)
    teacher_method, teacher_backbone = arguments.teacher.split(":")
    runs = []
    for seed in arguments.seeds:
        for backbone in arguments.backbones:
            for method in arguments.methods:
                if not supports(method, backbone):
                    continue
                if method == "distillation":
                    if backbone == teacher_backbone:
                        continue  # a student of the teacher's own size is not what distillation is for
                    teacher = Run(teacher_method, teacher_backbone, seed)
                    runs = [teacher, *(run for run in runs if run != teacher)]  # pre-trained first, measured too
                    runs.append(Run(method, backbone, seed, teacher=teacher.name))
                elif Run(method, backbone, seed) not in runs:
                    runs.append(Run(method, backbone, seed))

    def row_name(run: Run) -> str:
        if run.teacher:
            return f"{run.method} from {teacher_method} {teacher_backbone} ({run.backbone})"
        return f"{run.method} ({run.backbone})"

    rows = run_study(runs, budget, plan, arguments.runs_dir, row_name=row_name,
                     extra_protocols=lambda method: ("zero_shot",) if method == "dual_encoder" else (), dense=True)
    return {"configuration": configuration(arguments), "results": rows}


def columns() -> list[str]:
    """Every result key a row may hold, in reading order (the supervised row also has fine-tuning with
    every label setting of the frozen protocols: all labels is the reference the protocols are judged by)."""
    settings = list(dict.fromkeys(setting for settings in PLAN.values() for setting in settings))
    dense = [result_key(protocol, setting) for protocol, settings in DENSE_PLAN.items() for setting in settings]
    return [result_key(protocol, setting) for protocol in PLAN for setting in settings] + ["zero_shot"] + dense


def _cell(value: dict | None) -> str:
    return "-" if value is None else f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}"


def markdown(report: dict) -> str:
    configuration = report["configuration"]
    keys = columns()
    lines = [
        "# Which method for my data? Quality on the bundled scenes",
        "",
        f"Generated by `benchmarks/quality.py`: every method pre-trained on `{configuration['dataset_name']}` at "
        f"{configuration['image_size']} px for {configuration['max_steps']} steps of batch "
        f"{configuration['total_batch_size']}, seeds {configuration['seeds']} (commit {configuration.get('commit')}, "
        f"{configuration.get('host')}); top-1 accuracy (%) on the test split, "
        "mean ± std over seeds. k-NN: k=20, T=0.07. linear: logistic regression on frozen features, C chosen on a "
        "validation fifth of the labelled split. finetune: encoder + linear head, early-stopped on a validation fifth. "
        "-X%: X % of the training labels; -1-per-class: one label per class (no validation split: the default C / the "
        "full budget). segmentation_linear: mean IoU (%) over the masks' 11 classes (background and the labelled digit's "
        "class on its stroke pixels; the distractor fragments are background) of a linear layer on the frozen last "
        "feature map, upsampled to pixels, weight decay chosen on a validation fifth; its raw-pixel baseline is the "
        "same layer on each 4x4 cell's pixels.",
    ]
    for backbone in configuration["backbones"]:
        method_rows = sorted((row for row in report["results"] if row.endswith(f"({backbone})") and
                              not row.startswith(BASELINES)),
                             key=lambda row: -report["results"][row].get("linear", {"mean": 0})["mean"])
        baseline_rows = [f"{name} ({backbone})" for name in BASELINES if f"{name} ({backbone})" in report["results"]]
        used = [key for key in keys if any(key in report["results"][row] for row in method_rows + baseline_rows)]
        lines += ["", f"## {backbone}", "", "| pre-training | " + " | ".join(used) + " |", "|---|" + "---:|" * len(used)]
        for row in method_rows + baseline_rows:
            label = row.rsplit(" (", 1)[0]
            label = f"*{label}*" if label in BASELINES else label
            lines.append(f"| {label} | " + " | ".join(_cell(report["results"][row].get(key)) for key in used) + " |")
    lines += ["", "random init: the same encoder untrained, frozen (its fine-tuning is the supervised model). raw pixels: "
              "the centred pixels as features (fine-tuning: the linear head on them). supervised: the same architecture "
              "trained from random init with the column's labels (the fine-tuning protocol)."]
    return "\n".join(lines) + "\n"


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    configuration = report["configuration"]
    shown = ["knn", "linear", "linear-10%", "finetune-10%"]
    backbones = configuration["backbones"]
    figure, axes = plt.subplots(len(backbones), 1, figsize=(12, 3.6 * len(backbones)), squeeze=False)
    for axis, backbone in zip(axes[:, 0], backbones):
        rows = sorted((row for row in report["results"] if row.endswith(f"({backbone})") and not row.startswith(BASELINES)),
                      key=lambda row: -report["results"][row].get("linear", {"mean": 0})["mean"])
        width, labelled = 0.8 / len(shown), set()
        for index, key in enumerate(shown):
            positions = np.arange(len(rows)) + index * width
            values = [report["results"][row].get(key) for row in rows]
            axis.bar(positions, [100 * v["mean"] if v else 0 for v in values], width,
                     yerr=[100 * v["std"] if v else 0 for v in values], label=key, capsize=2)
            # each bar's own baselines, measured with its protocol and labels, as a tick across it
            for baseline, style, color in (("random init", ":", "black"), ("raw pixels", "-.", "dimgrey"),
                                           ("supervised", "-", "black")):
                value = report["results"].get(f"{baseline} ({backbone})", {}).get(key)
                if value is None or (baseline == "random init" and key.startswith("finetune")):
                    continue  # fine-tuning from random init is the supervised row
                axis.hlines([100 * value["mean"]] * len(rows), positions - width / 2, positions + width / 2,
                            linestyles=style, colors=color, linewidth=1.6,
                            label=None if baseline in labelled else f"{baseline} (same protocol)")
                labelled.add(baseline)
        axis.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [row.rsplit(" (", 1)[0] for row in rows], rotation=20)
        axis.set_ylabel("top-1 accuracy (%)")
        axis.set_title(f"{backbone} on {configuration['dataset_name']}, {configuration['max_steps']} steps per run")
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.subplots_adjust(left=0.06, right=0.8, hspace=0.5)
    return figure


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    report = collect(arguments)
    write_study(arguments.output_dir, "quality", report, markdown(report), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
