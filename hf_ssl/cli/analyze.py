"""Look inside a ViT: DINO attention maps, per-head attention statistics, CKA between layers.

    python -m hf_ssl.cli.analyze attention --model runs/dino-vit-s --images cat.jpg dog.jpg --out maps/
    python -m hf_ssl.cli.analyze attention --model runs/dino-vit-micro --bundled_variant scenes --num_images 359 --masks --out maps/
    python -m hf_ssl.cli.analyze metrics --model runs/splitmask-vit-s --out analysis/
    python -m hf_ssl.cli.analyze cka --model runs/splitmask-vit-s --other_model runs/dino-vit-s --out cka/

--model is a transformers ViT folder, an hf-ssl run folder (its encoder is used) or a backbone
folder. Without --images the first images of the bundled test split are used. Images are
preprocessed with the checkpoint's image processor when it has one, else resized to the
model's image size with ImageNet normalisation.

  attention  last-layer CLS attention per head over each image, and the masks keeping --mass of
             it (DINO, Caron et al. 2021): <out>/<image>/attention-head*.png, mask-head*.png,
             <out>/attention_grid.png, <out>/attention_maps.json; with --masks, the Jaccard index
             of each head's mask against the ground-truth foreground (the bundled scenes' digit
             masks, or one mask PNG per --images file) and the best head, DINO's measure
  metrics    average attention distance (pixels), attention entropy and KL divergence between
             heads, per layer and head (Xie et al. 2022): attention_metrics.json + PNG figures
  cka        linear CKA between the layers of --model (and --other_model): cka.json + heat maps
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from hf_ssl.analysis.cka import cka_matrix
from hf_ssl.analysis.encoders import (
    AnalysisInputError,
    bundled_images,
    bundled_masks,
    displayable_images,
    load_image_processor,
    load_images,
    load_masks,
    load_vit_encoder,
    preprocess_images,
)
from hf_ssl.analysis.maps import jaccard_references, jaccard_summary, mask_jaccard
from hf_ssl.analysis.figures import (
    attention_overlay,
    mask_overlay,
    plot_cka_matrix,
    plot_head_kl_divergence,
    plot_per_head_statistic,
    save_attention_grid,
    save_rgb,
)
from hf_ssl.analysis.statistics import (
    REPRESENTATION_POOLINGS,
    attention_statistics,
    cls_attention,
    cross_model_cka,
    layer_representations,
)
from hf_ssl.command_line import CommandParser
from hf_ssl.data.default import DEFAULT_VARIANTS
from hf_ssl.local_paths import check_local_path

# At most this many images go into the single attention_grid.png (each gets its own folder).
GRID_IMAGE_LIMIT = 8


class UsageError(Exception):
    """Bad command-line arguments (reported in one line, exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="hf-ssl analyze", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    def add_common(command: argparse.ArgumentParser, default_images: int) -> None:
        command.add_argument("--model", required=True, help="ViT folder, hf-ssl run folder or backbone folder")
        command.add_argument("--images", nargs="+", default=None, help="image files (default: the bundled test split)")
        command.add_argument("--num_images", type=int, default=default_images,
                             help=f"bundled images to use without --images (default {default_images})")
        command.add_argument("--bundled_variant", default=None, choices=DEFAULT_VARIANTS,
                             help="which bundled data to take images from without --images (default: digits; "
                                  "scenes with --masks, the variant that has masks)")
        command.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
        command.add_argument("--out", required=True, help="output folder (created)")

    attention = commands.add_parser("attention", help="DINO CLS attention maps and masks per head")
    add_common(attention, 4)
    attention.add_argument("--mass", type=float, default=0.6,
                           help="attention mass the masks keep (DINO's visualisation: 0.6)")
    attention.add_argument("--masks", nargs="*", default=None,
                           help="score each head's mask against the ground truth (Jaccard index): alone, the bundled "
                                "scenes' digit masks; or one mask PNG per --images file (foreground = value > 0)")
    metrics = commands.add_parser("metrics", help="attention distance, entropy and KL between heads")
    add_common(metrics, 32)
    cka = commands.add_parser("cka", help="linear CKA between layers (one model or two)")
    add_common(cka, 64)
    cka.add_argument("--other_model", default=None, help="a second model to compare layer by layer")
    cka.add_argument("--pooling", default="mean", choices=REPRESENTATION_POOLINGS,
                     help="mean: mean patch token per image (default); cls: the CLS token; flatten: all tokens of "
                          "an image as one example (Kornblith et al.'s activation maps; near 1 between every pair "
                          "of layers of the small default ViT); tokens: each patch token is an example")
    return parser


def _model_name(path: str) -> str:
    local = Path(path)
    return local.parent.name if local.name == "backbone" and local.parent.name else (local.name or str(path))


def _inputs(arguments):
    """(images, names) from --images or the bundled test split."""
    if arguments.images:
        return load_images(arguments.images), [Path(path).stem for path in arguments.images]
    images = bundled_images(arguments.num_images, arguments.bundled_variant)
    return images, [f"{arguments.bundled_variant}-test-{index}" for index in range(len(images))]


def _load(path: str):
    """(encoder, image processor or None)."""
    model = load_vit_encoder(path)
    try:
        processor = load_image_processor(path)
    except (OSError, ValueError) as error:
        raise AnalysisInputError(f"cannot load the image processor of {path}: {error}") from error
    return model, processor


def run_attention(arguments) -> list[Path]:
    model, processor = _load(arguments.model)
    images, names = _inputs(arguments)
    pixel_values = preprocess_images(images, model, processor)
    result = cls_attention(model, pixel_values, mass=arguments.mass, batch_size=arguments.batch_size)
    shown = displayable_images(pixel_values, processor).numpy()  # (B, H, W, 3)
    maps, masks = result.maps.numpy(), result.masks.numpy()
    truth = jaccard = None
    if arguments.masks is not None:
        size = tuple(pixel_values.shape[-2:])
        truth = load_masks(arguments.masks, size) if arguments.images else \
            bundled_masks(len(names), size, arguments.bundled_variant)
        jaccard = mask_jaccard(result.masks, truth)  # (B, heads)
    out = Path(arguments.out)
    written, summary = [], []
    for index, name in enumerate(names):
        folder = out / f"{index:02d}-{name}"
        written.append(save_rgb(shown[index], folder / "image.png"))
        if truth is not None:
            written.append(save_rgb(mask_overlay(shown[index], truth[index].numpy()), folder / "ground-truth.png"))
        for head in range(maps.shape[1]):
            written.append(save_rgb(attention_overlay(shown[index], maps[index, head]), folder / f"attention-head{head}.png"))
            written.append(save_rgb(mask_overlay(shown[index], masks[index, head]), folder / f"mask-head{head}.png"))
        summary.append({
            "image": arguments.images[index] if arguments.images else name,
            "folder": folder.name,
            "mask_patch_fraction": masks[index].reshape(masks.shape[1], -1).mean(axis=1).tolist(),
            "cls_to_patches_mass": maps[index].reshape(maps.shape[1], -1).sum(axis=1).tolist(),
            **({"jaccard_per_head": jaccard[index].tolist()} if jaccard is not None else {}),
        })
    limit = min(len(names), GRID_IMAGE_LIMIT)
    written.append(save_attention_grid(shown[:limit], maps[:limit], masks[:limit], out / "attention_grid.png",
                                       titles=names[:limit], mass=arguments.mass))
    report = {
        "model": arguments.model,
        "mass": arguments.mass,
        "grid": {"grid_height": result.grid.grid_height, "grid_width": result.grid.grid_width,
                 "patch_size": result.grid.patch_size, "num_prefix_tokens": result.grid.num_prefix_tokens},
        "num_heads": int(maps.shape[1]),
        **({"jaccard": {**jaccard_summary(jaccard), **jaccard_references(truth, result.masks.shape[-2:])}}
           if jaccard is not None else {}),
        "images": summary,
    }
    if jaccard is not None:
        best = report["jaccard"]
        print(f"Jaccard index of the {arguments.mass:g}-mass masks against the ground truth over {len(names)} images: "
              f"best head {best['best_head']} {best['best_head_jaccard']:.3f}, mean over heads "
              f"{best['mean_over_heads']:.3f} (every patch: {best['every_patch']:.3f}; the patches touching the "
              f"foreground, the best a patch mask can roughly do: {best['foreground_patches']:.3f})")
    written.append(_write_json(report, out / "attention_maps.json"))
    return written


def run_metrics(arguments) -> list[Path]:
    model, processor = _load(arguments.model)
    images, _ = _inputs(arguments)
    statistics = attention_statistics(model, preprocess_images(images, model, processor), arguments.batch_size)
    name, out = _model_name(arguments.model), Path(arguments.out)
    report = {"model": arguments.model, **statistics.to_dict()}
    return [
        _write_json(report, out / "attention_metrics.json"),
        plot_per_head_statistic(statistics.attention_distance, out / "attention_distance.png",
                                "average attention distance (pixels)", f"{name}: attention distance per head",
                                reference=statistics.uniform_attention_distance),
        plot_per_head_statistic(statistics.attention_entropy, out / "attention_entropy.png",
                                "attention entropy (nats)", f"{name}: attention entropy per head",
                                reference=statistics.uniform_attention_entropy),
        plot_head_kl_divergence(statistics.head_kl_divergence, out / "head_kl_divergence.png",
                                f"{name}: KL divergence between heads"),
    ]


def run_cka(arguments) -> list[Path]:
    model, processor = _load(arguments.model)
    images, _ = _inputs(arguments)
    name, out = _model_name(arguments.model), Path(arguments.out)
    representations = layer_representations(model, preprocess_images(images, model, processor),
                                             arguments.pooling, arguments.batch_size)
    matrices = {"model": cka_matrix(representations)}
    written = [plot_cka_matrix(matrices["model"], out / "cka_model.png", f"linear CKA: {name}", name, name)]
    if arguments.other_model:
        other, other_processor = _load(arguments.other_model)
        other_name = _model_name(arguments.other_model)
        others = layer_representations(other, preprocess_images(images, other, other_processor),
                                       arguments.pooling, arguments.batch_size)
        matrices["model_vs_other_model"] = cross_model_cka(representations, others)
        matrices["other_model"] = cka_matrix(others)
        written.append(plot_cka_matrix(matrices["other_model"], out / "cka_other_model.png",
                                       f"linear CKA: {other_name}", other_name, other_name))
        written.append(plot_cka_matrix(matrices["model_vs_other_model"], out / "cka_model_vs_other_model.png",
                                       f"linear CKA: {name} vs {other_name}", name, other_name))
    report = {
        "model": arguments.model,
        "other_model": arguments.other_model,
        "pooling": arguments.pooling,
        "num_images": len(images),
        "layers": "index 0 is the embedding output, index l the output of block l",
        **{name_: matrix.tolist() for name_, matrix in matrices.items()},
    }
    written.insert(0, _write_json(report, out / "cka.json"))
    return written


def _write_json(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def _check_arguments(arguments) -> None:
    for flag in ("model", "other_model"):
        try:
            check_local_path(getattr(arguments, flag, None) or ".", f"--{flag}")
        except ValueError as error:
            raise UsageError(f"analyze {arguments.command}: {error}") from None
    if arguments.num_images < 1:
        raise UsageError(f"analyze {arguments.command}: --num_images must be >= 1, got {arguments.num_images}")
    if arguments.batch_size < 1:
        raise UsageError(f"analyze {arguments.command}: --batch_size must be >= 1, got {arguments.batch_size}")
    if arguments.command == "attention" and not 0 < arguments.mass <= 1:
        raise UsageError(f"analyze attention: --mass must be in (0, 1], got {arguments.mass}")
    masks = getattr(arguments, "masks", None)
    arguments.bundled_variant = arguments.bundled_variant or ("scenes" if masks is not None else "digits")
    if masks and not arguments.images:
        raise UsageError("analyze attention: mask files need --images (one mask per image); alone, --masks scores the "
                         "bundled scenes")
    if masks is not None and arguments.images and len(masks) != len(arguments.images):
        raise UsageError(f"analyze attention: --masks needs one file per --images file, got {len(masks)} masks for "
                         f"{len(arguments.images)} images")


COMMANDS = {"attention": run_attention, "metrics": run_metrics, "cka": run_cka}


def main(argv=None) -> int:
    """Run one analysis; returns the exit code (2 with one line on stderr for bad input)."""
    try:
        arguments = build_parser().parse_args(argv)
        _check_arguments(arguments)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_request:  # --help, or a mistake the parser reported
        return int(exit_request.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as transformers_logging

    # Loading an encoder without its pooler prints a key report per model; the analysis never uses it.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        written = COMMANDS[arguments.command](arguments)
    except AnalysisInputError as error:
        print(f"error: analyze {arguments.command}: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
