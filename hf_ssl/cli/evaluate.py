"""Evaluate a pre-trained encoder: kNN, linear probe and fine-tuning on labelled images (``hf-ssl evaluate``).

    hf-ssl evaluate --model runs/splitmask-vit-s --protocol knn linear finetune
    hf-ssl evaluate --model runs/x --protocol knn linear --dataset_name my-org/labelled --label_column label
    hf-ssl evaluate --model runs/x --protocol linear --label_settings all 10% 1% 1-per-class
    hf-ssl evaluate --model runs/x --protocol finetune --finetune_preset mae-base --finetune_epochs 20
    hf-ssl evaluate --model runs/dual --protocol zero_shot retrieval --labels zero one two ... --templates "a photo of a {}."

Without --dataset_name the bundled digits are used. Results are merged into
<model>/eval_results.json (a local folder) and the model card is refreshed; --output_file
writes elsewhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hf_ssl.eval import BASELINES, PROTOCOLS, evaluate_model
from hf_ssl.eval.finetune import FINETUNE_PRESETS, FinetuneSettings, finetune_settings


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder, backbone folder or Hub repo id")
    parser.add_argument("--protocol", nargs="+", default=["knn", "linear"], choices=PROTOCOLS)
    parser.add_argument("--dataset_name", default=None, help="datasets name/path; default: bundled digits")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--caption_column", default="caption", help="captions for --protocol retrieval")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="class names for --protocol zero_shot, in class-index order (default: the label column's)")
    parser.add_argument("--templates", nargs="+", default=None,
                        help="zero-shot prompt templates with {} for the label, ensembled (default: 'a photo of a {}.')")
    parser.add_argument("--label_settings", nargs="+", default=["all"],
                        help="labelled part of the train split: all, 1%%, 10%%, 1-per-class, ...")
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls"],
                        help="mean of patch tokens (SplitMask's downstream recipe) or the CLS token")
    parser.add_argument("--knn_k", type=int, default=20, help="neighbours (DINO: 20)")
    parser.add_argument("--knn_temperature", type=float, default=0.07, help="vote temperature (DINO: 0.07)")
    parser.add_argument("--linear_epochs", type=int, default=100)
    parser.add_argument("--linear_learning_rate", type=float, default=3e-2)
    defaults = FinetuneSettings()
    parser.add_argument("--finetune_preset", default=None, choices=sorted(FINETUNE_PRESETS),
                        help="a published fine-tuning recipe (docs/recipes.md); the flags below override its values")
    parser.add_argument("--finetune_epochs", type=int, default=None, help=f"default {defaults.epochs}")
    parser.add_argument("--finetune_learning_rate", type=float, default=None,
                        help=f"peak LR (default {defaults.learning_rate:g}; a preset scales its own with the batch size)")
    parser.add_argument("--finetune_batch_size", type=int, default=None, help=f"default {defaults.batch_size}")
    parser.add_argument("--layer_decay", type=float, default=None,
                        help=f"layer-wise LR decay for fine-tuning (default {defaults.layer_decay}; BEiT / MAE ViT-B: "
                             "0.65); 1 disables it")
    parser.add_argument("--finetune_weight_decay", type=float, default=None, help=f"default {defaults.weight_decay}")
    parser.add_argument("--finetune_drop_path", type=float, default=None,
                        help=f"stochastic depth while fine-tuning (default {defaults.drop_path_rate}; papers: 0.1)")
    parser.add_argument("--finetune_warmup_fraction", type=float, default=None,
                        help=f"warm-up fraction of the steps (default {defaults.warmup_fraction})")
    parser.add_argument("--finetune_label_smoothing", type=float, default=None,
                        help=f"default {defaults.label_smoothing}")
    parser.add_argument("--max_samples", type=int, default=None, help="cap on images per split (quick checks)")
    parser.add_argument("--random_init", action="store_true", help="evaluate a randomly initialised encoder (baseline)")
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=[*BASELINES, "none"],
                        help="compare with the same encoder at random init, raw pixels and a supervised model of the "
                             "same architecture trained on the labelled split (default: all three; 'none' skips them)")
    parser.add_argument("--feature_cache_dir", default=None,
                        help="keep frozen features here (default: <model>/eval_cache for local folders)")
    parser.add_argument("--output_file", default=None, help="default: <model>/eval_results.json for local folders")
    parser.add_argument("--no_card", action="store_true", help="do not refresh the model card")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(arguments)
    except (ValueError, OSError) as error:  # bad model path, unsafe checkpoint, missing column ...
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def resolve_finetune_settings(arguments: argparse.Namespace) -> FinetuneSettings:
    """The fine-tuning settings: the preset's (or hf-ssl's defaults), explicit flags on top."""
    return finetune_settings(
        arguments.finetune_preset,
        epochs=arguments.finetune_epochs,
        batch_size=arguments.finetune_batch_size,
        learning_rate=arguments.finetune_learning_rate,
        weight_decay=arguments.finetune_weight_decay,
        drop_path_rate=arguments.finetune_drop_path,
        warmup_fraction=arguments.finetune_warmup_fraction,
        label_smoothing=arguments.finetune_label_smoothing,
        layer_decay=arguments.layer_decay,  # 1 disables it
    )


def run(arguments: argparse.Namespace) -> dict:
    local = Path(arguments.model)
    is_run_folder = local.is_dir() and (local / "config.json").is_file()
    output_file = arguments.output_file or (local / "eval_results.json" if is_run_folder and not arguments.random_init else None)
    cache_dir = arguments.feature_cache_dir or (local / "eval_cache" if is_run_folder and not arguments.random_init else None)
    results = evaluate_model(
        arguments.model,
        protocols=arguments.protocol,
        dataset_name=arguments.dataset_name,
        train_split=arguments.train_split,
        test_split=arguments.test_split,
        image_column=arguments.image_column,
        label_column=arguments.label_column,
        label_settings=arguments.label_settings,
        pooling=arguments.pooling,
        knn_k=arguments.knn_k,
        knn_temperature=arguments.knn_temperature,
        linear_epochs=arguments.linear_epochs,
        linear_learning_rate=arguments.linear_learning_rate,
        finetune_settings=resolve_finetune_settings(arguments),
        max_samples=arguments.max_samples,
        random_init=arguments.random_init,
        baselines=() if "none" in arguments.baselines or arguments.random_init else tuple(arguments.baselines),
        feature_cache_dir=cache_dir,
        output_file=output_file,
        seed=arguments.seed,
        caption_column=arguments.caption_column,
        labels=arguments.labels,
        templates=arguments.templates,
    )
    print(json.dumps(results, indent=2, sort_keys=True))
    if output_file is not None and is_run_folder and not arguments.no_card and (local / "model.safetensors").is_file() \
            and local.name != "backbone":
        from hf_ssl.hub import write_model_card

        print(f"model card: {write_model_card(local)}")
    return results


if __name__ == "__main__":
    sys.exit(main())
