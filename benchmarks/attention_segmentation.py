"""Does DINO's last-layer attention segment the object at this scale?

DINO (Caron et al. 2021, arXiv:2104.14294, section 4.2.1 and Table 8) thresholds each head's
last-layer CLS attention to keep 60 % of its mass and reports the Jaccard index of that mask
against the ground-truth object: self-supervised DINO ViTs segment, supervised ones much less. This
script measures the same on the bundled digit scenes' test images (the digit's stroke pixels are
the object; the distractor fragments and lines are background) for any ViT encoders given, next to
the first one's architecture at random init and, with ``--supervised``, the same architecture
trained from random init on the scenes' labels with a CLS-token classifier (DeiT's supervised
reference in the paper):

    python benchmarks/attention_segmentation.py --supervised --models \\
        dino:runs/dino-vit-micro mim:runs/splitmask-vit-micro mim:runs/mae-vit-micro

Each model is ``family:path``; the verdict compares the ``dino`` family with every other model.
Writes ``<output_dir>/attention_segmentation.{json,md,png}`` (the figure: the best head's mask on
a few test scenes, per model, under the ground truth).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from report import check_family_entries, write_study

REPO = Path(__file__).resolve().parents[1]
FIGURE_IMAGES = 6


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="family:path (a ViT, run or backbone folder)")
    parser.add_argument("--supervised", action="store_true",
                        help="add the first model's architecture trained from random init on the scenes' labels (CLS token)")
    parser.add_argument("--supervised_max_steps", type=int, default=None, help="default: the fine-tuning protocol's budget")
    parser.add_argument("--num_images", type=int, default=359, help="test scenes measured (359: all)")
    parser.add_argument("--mass", type=float, default=0.6, help="attention mass each head's mask keeps (DINO: 0.6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init and supervised models")
    parser.add_argument("--output_dir", type=Path, default=REPO / "benchmarks" / "results")
    arguments = parser.parse_args(argv)
    check_family_entries(parser, arguments.models)
    return arguments


def supervised_encoder(encoder, processor, arguments) -> tuple[torch.nn.Module, dict]:
    """The architecture of `encoder` trained from random init on the scenes' train labels with a
    linear head on the CLS token; returns ``(its encoder, its test metrics)``."""
    from hf_ssl.backbones import default_image_processor
    from hf_ssl.eval.data import DataSelection, LabelledData
    from hf_ssl.eval.finetune import FinetuneSettings, finetune
    from hf_ssl.eval.runner import random_init_like

    # without a saved processor: the analysis' fallback (resize, ImageNet normalisation) at the config's size
    data = LabelledData.load(DataSelection("digit-scenes"), processor or default_image_processor(encoder.config.image_size))
    settings = FinetuneSettings(max_steps=arguments.supervised_max_steps).for_random_init()
    metrics, classifier = finetune(random_init_like(encoder, arguments.seed), data.train_pixels, data.train_labels,
                                   data.test_pixels, data.test_labels, data.num_classes, settings=settings,
                                   pooling="cls", seed=arguments.seed)
    return classifier.backbone, {key: metrics[key] for key in ("accuracy", "steps", "best_step")}


def attention_jaccard(encoder, pixels: torch.Tensor, truth: torch.Tensor, mass: float) -> tuple[dict, torch.Tensor]:
    """``({per-head summary and references}, (B, h, w) best head's masks)`` of one encoder."""
    from hf_ssl.analysis import cls_attention, jaccard_references, jaccard_summary, mask_jaccard, prepare_vit

    result = cls_attention(prepare_vit(encoder), pixels, mass=mass)
    summary = jaccard_summary(mask_jaccard(result.masks, truth))
    return {**summary, **jaccard_references(truth, result.masks.shape[-2:])}, result.masks[:, summary["best_head"]]


def measure(arguments) -> tuple[dict, dict]:
    """``(report, figure data)``."""
    from hf_ssl.analysis import (
        bundled_images,
        bundled_masks,
        displayable_images,
        load_image_processor,
        load_vit_encoder,
        preprocess_images,
    )
    from hf_ssl.eval.runner import random_init_like

    images = bundled_images(arguments.num_images, "scenes")
    models, masks, shown, truth = {}, {}, None, None
    entries = [entry.split(":", 1) for entry in arguments.models]
    for index, (family, path) in enumerate(entries):
        encoder, processor = load_vit_encoder(path), load_image_processor(path)
        pixels = preprocess_images(images, encoder, processor)
        if truth is None:
            truth = bundled_masks(len(images), tuple(pixels.shape[-2:]), "scenes")
            shown = displayable_images(pixels[:FIGURE_IMAGES], processor)
        candidates = [(f"{family}: {Path(path).name}", family, encoder, {})]
        if index == 0:  # the same architecture untrained, and trained on the labels
            candidates.append(("random init", "random init", random_init_like(encoder, arguments.seed), {}))
            if arguments.supervised:
                trained, metrics = supervised_encoder(encoder, processor, arguments)
                candidates.append(("supervised (CLS classifier)", "supervised", trained, {"supervised": metrics}))
        for name, model_family, model, extra in candidates:
            with torch.no_grad():
                summary, best_masks = attention_jaccard(model.eval(), pixels, truth, arguments.mass)
            models[name] = {"family": model_family, "path": path, **summary, **extra}
            masks[name] = best_masks[:FIGURE_IMAGES]
            print(f"{name}: best head {summary['best_head']} Jaccard {summary['best_head_jaccard']:.3f}, "
                  f"mean over heads {summary['mean_over_heads']:.3f}", flush=True)
    report = {"configuration": {"num_images": len(images), "mass": arguments.mass, "seed": arguments.seed},
              "models": models, "verdict": verdict(models)}
    return report, {"shown": shown, "truth": truth[:FIGURE_IMAGES], "masks": masks}


def verdict(models: dict) -> str:
    """Whether every DINO encoder's best head segments better than every other model's, and better
    than keeping every patch."""
    dino = [name for name, model in models.items() if model["family"] == "dino"]
    others = [name for name, model in models.items() if model["family"] != "dino"]
    if not dino or not others:
        return "no verdict: give at least one dino model and one other"
    best = {name: model["best_head_jaccard"] for name, model in models.items()}
    every_patch = next(iter(models.values()))["every_patch"]
    appears = min(best[name] for name in dino) > max(max(best[name] for name in others), every_patch)
    values = ", ".join(f"{name} {best[name]:.3f}" for name in (*dino, *others))
    return (f"DINO's property {'APPEARS' if appears else 'DOES NOT APPEAR'} at this scale: best-head Jaccard {values}; "
            f"a mask keeping every patch scores {every_patch:.3f} (the paper: DINO's heads segment the object, "
            "a supervised ViT's much less)")


def markdown(report: dict) -> str:
    configuration = report["configuration"]
    first = next(iter(report["models"].values()))
    lines = ["# Does the last-layer attention segment the digit? (DINO's Jaccard measure)", "",
             f"Generated by `benchmarks/attention_segmentation.py` on {configuration['num_images']} bundled digit-scenes "
             f"test images: each head's mask keeps {configuration['mass']:g} of its last-layer CLS attention mass; "
             "the Jaccard index against the digit's stroke pixels, averaged over the images. References: a mask "
             f"keeping every patch {first['every_patch']:.3f}; exactly the patches touching the digit "
             f"{first['foreground_patches']:.3f} (roughly the best a patch mask can do).", "",
             "| model | best head | its Jaccard | mean over heads | per head |", "|---|---:|---:|---:|---|"]
    for name, model in report["models"].items():
        per_head = " / ".join(f"{value:.3f}" for value in model["per_head"])
        lines.append(f"| {name} | {model['best_head']} | {model['best_head_jaccard']:.3f} | "
                     f"{model['mean_over_heads']:.3f} | {per_head} |")
    supervised = [model["supervised"] for model in report["models"].values() if "supervised" in model]
    if supervised:
        lines += ["", f"The supervised model's test accuracy on the scenes' labels: {100 * supervised[0]['accuracy']:.1f} % "
                      f"(best validation check at step {supervised[0]['best_step']} of {supervised[0]['steps']})."]
    lines += ["", f"Verdict: {report['verdict']}."]
    return "\n".join(lines) + "\n"


def plot_function(figure_data: dict):
    def plot(report: dict):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        from hf_ssl.analysis.figures import mask_overlay

        shown, truth, masks = figure_data["shown"].numpy(), figure_data["truth"].numpy(), figure_data["masks"]
        rows = ["ground truth", *masks]
        figure, axes = plt.subplots(len(rows), len(shown), figsize=(1.6 * len(shown), 1.7 * len(rows)), squeeze=False)
        for row, name in enumerate(rows):
            for column, image in enumerate(shown):
                if row == 0:
                    overlay = np.where(truth[column][..., None], 0.5 * image + 0.5 * np.array([1.0, 0.2, 0.2]), 0.35 * image)
                else:
                    overlay = mask_overlay(image, masks[name][column].numpy())
                axes[row][column].imshow(overlay.clip(0, 1), interpolation="nearest")
                axes[row][column].set_xticks([])
                axes[row][column].set_yticks([])
            model = report["models"].get(name, {})
            short = name.split(": ", 1)[-1]  # the folder name, shortened: the row labels must not overlap
            label = name if row == 0 else (f"{model['family']}\n{short[:14] + '...' if len(short) > 16 else short}\n"
                                           f"head {model['best_head']}: {model['best_head_jaccard']:.2f}")
            axes[row][0].set_ylabel(label, fontsize=7)
        figure.suptitle(f"best head's {report['configuration']['mass']:g}-mass attention mask", fontsize=9)
        return figure

    return plot


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    from hf_ssl.analysis import AnalysisInputError

    try:
        report, figure_data = measure(arguments)
    except AnalysisInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_study(arguments.output_dir, "attention_segmentation", report, markdown(report), plot_function(figure_data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
