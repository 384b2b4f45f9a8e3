"""Do masked-image-modeling encoders keep diverse attention heads where contrastive ones lose them?

Xie et al. 2022 ("Revealing the Dark Secrets of Masked Image Modeling", arXiv:2205.13543) find
that MIM models keep local and global heads in every layer, with diverse heads (large KL
divergence between heads), while supervised and contrastive models lose head diversity in their
last layers. This script measures the same statistics (`hf_ssl.analysis.attention_statistics`) on
any ViT encoders given, next to the first one at random init, and writes a table, a figure and a
verdict that says whether the finding holds for the encoders given:

    python benchmarks/attention_study.py --models mim:runs/splitmask-vit-micro-digit-scenes \\
        contrastive:runs/dino-vit-micro-digit-scenes --bundled_variant scenes

Each model is ``family:path``, family one of ``mim``, ``contrastive``, ``supervised`` or any label
(only mim vs contrastive / supervised enter the verdict). Writes
``<output_dir>/attention_study.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from report import check_family_entries, write_study

REPO = Path(__file__).resolve().parents[1]
COMPARED_FAMILIES = ("contrastive", "supervised")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="family:path (a ViT, run or backbone folder)")
    parser.add_argument("--bundled_variant", choices=("digits", "scenes"), default="scenes")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init reference")
    parser.add_argument("--output_dir", type=Path, default=REPO / "benchmarks" / "results")
    arguments = parser.parse_args(argv)
    check_family_entries(parser, arguments.models)
    return arguments


def layer_summary(statistics) -> dict[str, list[float]]:
    """Per layer: mean head distance, the spread between the most local and most global head, mean
    head entropy and the mean KL divergence between heads (head diversity)."""
    distance = statistics.attention_distance  # (L, H) pixels
    return {
        "attention_distance": distance.mean(dim=1).tolist(),
        "distance_spread": (distance.max(dim=1).values - distance.min(dim=1).values).tolist(),
        "attention_entropy": statistics.attention_entropy.mean(dim=1).tolist(),
        "head_kl_divergence": statistics.head_kl_divergence.tolist(),
    }


def measure(arguments) -> dict:
    from hf_ssl.analysis import (
        attention_statistics,
        bundled_images,
        load_image_processor,
        load_vit_encoder,
        prepare_vit,
        preprocess_images,
    )
    from hf_ssl.eval.runner import random_init_like

    images = bundled_images(arguments.num_images, arguments.bundled_variant)
    models = {}
    for index, entry in enumerate(arguments.models):
        family, path = entry.split(":", 1)
        encoder = load_vit_encoder(path)
        pixels = preprocess_images(images, encoder, load_image_processor(path))
        with torch.no_grad():
            models[f"{family}: {Path(path).name}"] = {"family": family, "path": path,
                                                     **layer_summary(attention_statistics(encoder, pixels))}
            if index == 0:  # the same architecture untrained: what training changed
                untrained = prepare_vit(random_init_like(encoder, arguments.seed))
                models["random init"] = {"family": "random init", "path": path,
                                         **layer_summary(attention_statistics(untrained, pixels))}
    return {"configuration": {"bundled_variant": arguments.bundled_variant, "num_images": len(images)},
            "models": models, "verdict": verdict(models)}


def verdict(models: dict) -> str:
    """Whether the MIM encoders keep more head diversity in their last layer than the others."""
    last = {name: model["head_kl_divergence"][-1] for name, model in models.items()}
    mim = [name for name, model in models.items() if model["family"] == "mim"]
    others = [name for name, model in models.items() if model["family"] in COMPARED_FAMILIES]
    if not mim or not others:
        return "no verdict: give at least one mim and one contrastive or supervised model"
    holds = min(last[name] for name in mim) > max(last[name] for name in others)
    values = ", ".join(f"{name} {last[name]:.3f}" for name in (*mim, *others))
    return (f"{'HOLDS' if holds else 'DOES NOT HOLD'} here: last-layer KL divergence between heads: {values} "
            "(the paper: MIM keeps diverse heads in the last layers, contrastive / supervised models lose them)")


def markdown(report: dict) -> str:
    configuration = report["configuration"]
    lines = ["# Attention heads: masked image modeling vs contrastive", "",
             f"Generated by `benchmarks/attention_study.py` on {configuration['num_images']} bundled "
             f"`{configuration['bundled_variant']}` test images. Per layer (first to last): mean attention distance "
             "in pixels, spread between the most local and most global head, mean KL divergence between heads.", "",
             "| model | distance per layer | head spread per layer | head KL per layer |", "|---|---|---|---|"]
    for name, model in report["models"].items():
        cells = [" / ".join(f"{value:.2f}" for value in model[key])
                 for key in ("attention_distance", "distance_spread", "head_kl_divergence")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Verdict: {report['verdict']}."]
    return "\n".join(lines) + "\n"


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("attention_distance", "mean attention distance (px)"), ("distance_spread", "most global - most local head (px)"),
            ("head_kl_divergence", "KL divergence between heads"))
    figure, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.6))
    for axis, (key, title) in zip(axes, keys):
        for name, model in report["models"].items():
            values = model[key]
            axis.plot(range(1, len(values) + 1), values, marker="o", label=name,
                      linestyle=":" if model["family"] == "random init" else "-")
        axis.set_xlabel("layer")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return figure


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    from hf_ssl.analysis import AnalysisInputError

    try:
        report = measure(arguments)
    except AnalysisInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_study(arguments.output_dir, "attention_study", report, markdown(report), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
