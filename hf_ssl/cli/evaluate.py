"""Evaluate a pre-trained encoder next to its baselines (``hf-ssl evaluate``).

    hf-ssl evaluate --model runs/splitmask-vit-s --protocol knn linear finetune
    hf-ssl evaluate --model runs/x --protocol knn linear --dataset_name my-org/labelled --label_column label
    hf-ssl evaluate --model runs/x --protocol linear finetune --label_settings all 10% 1% 1-per-class
    hf-ssl evaluate --model runs/x --baselines random_init raw_pixels supervised pretrained:google/vit-base-patch16-224
    hf-ssl evaluate --model runs/x --protocol finetune --finetune_preset mae-base --finetune_epochs 20
    hf-ssl evaluate --model runs/x --protocol segmentation_linear --label_settings all 10%
    hf-ssl evaluate --model runs/dual --protocol zero_shot retrieval --zero_shot_labels zero one two ...

Without --dataset_name a run folder is evaluated on the bundled data it was pre-trained on, any
other model on the bundled digit scenes. Prints one table (each protocol next to its
baselines) and a verdict; results are merged into <model>/eval_results.json (a local folder) and
the model card is refreshed; --output_file writes elsewhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hf_ssl.command_line import CommandParser
from hf_ssl.eval import BASELINES, evaluate_model
from hf_ssl.eval.data import DataSelection, default_dataset_name
from hf_ssl.eval.protocol import available_protocols, get_protocol, settings_values
from hf_ssl.eval.report import format_report
from hf_ssl.eval.runner import PRETRAINED_PREFIX, check_baselines
from hf_ssl.local_paths import check_local_path


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = CommandParser(prog="hf-ssl evaluate", description=__doc__)
    parser.add_argument("--model", required=True, help="run folder, backbone folder or Hub repo id")
    parser.add_argument("--protocol", nargs="+", default=["knn", "linear"], choices=available_protocols(),
                        help="; ".join(f"{name}: {get_protocol(name).description}" for name in available_protocols()))
    parser.add_argument("--dataset_name", default=None, help="datasets name/path; default: the bundled data the run was trained on, else the digit scenes")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--mask_column", default="mask",
                        help="per-pixel class images (PNG) for the segmentation protocols; 255 = unlabelled")
    parser.add_argument("--label_settings", nargs="+", default=["all"],
                        help="labelled part of the train split: all, 1%%, 10%%, 1-per-class, ...")
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls"],
                        help="mean of patch tokens (SplitMask's downstream recipe) or the CLS token")
    parser.add_argument("--max_samples", type=int, default=None, help="cap on images per split (quick checks)")
    parser.add_argument("--random_init", action="store_true", help="evaluate a randomly initialised encoder (baseline)")
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES),
                        help="random_init (same encoder untrained), raw_pixels, supervised (same architecture trained "
                             "from random init on the labels), pretrained:<model folder or Hub id> (any transformers / "
                             "timm checkpoint, e.g. an ImageNet model), or none (default: the first three)")
    parser.add_argument("--feature_cache_dir", default=None,
                        help="keep frozen features here (default: <model>/eval_cache for local folders)")
    parser.add_argument("--output_file", default=None, help="default: <model>/eval_results.json for local folders")
    parser.add_argument("--no_card", action="store_true", help="do not refresh the model card")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--seed", type=int, default=0)
    for name in available_protocols():
        get_protocol(name).add_arguments(parser)
    arguments = parser.parse_args(argv)
    if "none" in arguments.baselines:
        arguments.baselines = []
    try:
        check_local_path(arguments.model, "--model")
        for baseline in arguments.baselines:
            if baseline.startswith(PRETRAINED_PREFIX):
                check_local_path(baseline[len(PRETRAINED_PREFIX):], f"--baselines {PRETRAINED_PREFIX}")
        check_baselines(arguments.baselines)
    except ValueError as error:
        parser.error(str(error))
    return arguments


def protocol_settings(arguments: argparse.Namespace) -> dict[str, object]:
    """``{protocol: settings}`` from the ``--<protocol>_<field>`` flags (a fine-tuning preset under them)."""
    settings = {}
    for name in available_protocols():
        protocol = get_protocol(name)
        extra = {"preset": arguments.finetune_preset} if name == "finetune" else {}
        settings[name] = protocol.settings(**extra, **settings_values(arguments, name, protocol.settings_class))
    return settings


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(arguments)
    except (ValueError, OSError) as error:  # bad model path, unsafe checkpoint, missing column ...
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def run(arguments: argparse.Namespace) -> dict:
    local = Path(arguments.model)
    is_run_folder = local.is_dir() and (local / "config.json").is_file()
    output_file = arguments.output_file or (local / "eval_results.json" if is_run_folder and not arguments.random_init else None)
    cache_dir = arguments.feature_cache_dir or (local / "eval_cache" if is_run_folder and not arguments.random_init else None)
    results = evaluate_model(
        arguments.model,
        protocols=arguments.protocol,
        data=DataSelection(arguments.dataset_name or default_dataset_name(arguments.model), arguments.train_split,
                           arguments.test_split, arguments.image_column, arguments.label_column, arguments.max_samples,
                           arguments.mask_column),
        label_settings=arguments.label_settings,
        baselines=() if arguments.random_init else tuple(arguments.baselines),
        settings=protocol_settings(arguments),
        pooling=arguments.pooling,
        random_init=arguments.random_init,
        feature_cache_dir=cache_dir,
        output_file=output_file,
        seed=arguments.seed,
    )
    print(json.dumps(results, indent=2, sort_keys=True) if arguments.json else format_report(results))
    if output_file is not None and is_run_folder and not arguments.no_card and (local / "model.safetensors").is_file() \
            and local.name != "backbone":
        from hf_ssl.hub import write_model_card

        print(f"model card: {write_model_card(local)}")
    return results


if __name__ == "__main__":
    sys.exit(main())
