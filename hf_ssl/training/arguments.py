"""Arguments of `trainers/pretrain.py`: one dataclass, parsed from the command line and/or YAML.

Every field is a command-line flag (``--max_steps 1000``); ``--config run.yaml`` reads the same
names from a file, and flags given next to it win. Fields left at None are resolved from the
method's recipe (model, image size, learning rate, warm-up, clipping) or, when no dataset is
given, from the bundled default run (digits, vit-micro, 32 px). `validate_arguments` rejects
unusable combinations before any data is read or any weight is allocated.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import yaml
from transformers import HfArgumentParser

from hf_ssl.backbones import backbone_preset
from hf_ssl.data.default import DEFAULT_DATASET_NAME
from hf_ssl.recipes import available_methods, get_recipe

MixedPrecision = Literal["no", "bf16", "fp16"]
REPORT_TO_CHOICES = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "all", "none")

# The run `python trainers/pretrain.py` makes with no arguments: the bundled digits, a ViT small
# enough to pre-train on 2 CPU cores in a few minutes (8-px patches, see hf_ssl/recipes/splitmask.py).
# Measured on it (kNN k=20 on the digits test split; random init 0.599): 300 steps at LR 5e-4 ->
# 0.657 (7e-4 -> 0.649, 1.5e-3 -> 0.599); 1200 steps at 5e-4 -> 0.716 (1.5e-3 -> 0.660), 150 s wall.
BUNDLED_RUN_DEFAULTS = dict(
    model="vit-micro", image_size=32, max_steps=1200, total_batch_size=64, learning_rate=5e-4, save_steps=400,
    dataloader_num_workers=1,
)
# Any other dataset: a real run, the recipe's published optimizer settings.
GENERAL_RUN_DEFAULTS = dict(total_batch_size=256, save_steps=1000, dataloader_num_workers=4)


class ConfigurationError(ValueError):
    """The arguments cannot produce a working run; the message names the field and the fix."""


@dataclass
class PretrainingArguments:
    """Everything a pre-training run needs; `None` means "the recipe's / default run's value"."""

    # --- method and model
    method: str = field(default="splitmask", metadata={"help": "Pre-training method (a registered recipe)."})
    model: str | None = field(default=None, metadata={"help": "Backbone preset, e.g. vit-small (default: the recipe's)."})
    model_overrides: str | None = field(
        default=None, metadata={"help": 'JSON dict of model config fields, e.g. \'{"mask_ratio": 0.5}\'.'}
    )
    image_size: int | None = field(default=None, metadata={"help": "Square input side in pixels (default: the recipe's)."})
    image_mean: list[float] | None = field(default=None, metadata={"help": "Per-channel mean (default ImageNet's)."})
    image_std: list[float] | None = field(default=None, metadata={"help": "Per-channel std (default ImageNet's)."})
    # --- data
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, 'parquet' / 'webdataset' / 'imagefolder' with --data_files or --data_dir, "
                          "or a local folder. Default: the bundled digits (no network)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration (subset) name."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of data files for a packaged builder."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Data files / globs (parquet, tar shards)."})
    train_split: str = field(default="train", metadata={"help": "Split to pre-train on."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images (webdataset: e.g. jpg)."})
    streaming: bool = field(default=False, metadata={"help": "Read the dataset while training instead of downloading it first."})
    shuffle_buffer_size: int = field(
        default=1000, metadata={"help": "Rows per shuffled block per worker (exactly resumable block shuffle)."}
    )
    dataloader_num_workers: int | None = field(
        default=None, metadata={"help": "Decoding/augmentation worker processes per process (default 1 for digits, else 4)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    # --- optimisation
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps to train for."})
    total_batch_size: int | None = field(
        default=None, metadata={"help": "Images per optimizer step over all processes and accumulation steps."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate (default: recipe base LR scaled by total_batch_size)."}
    )
    weight_decay: float | None = field(default=None, metadata={"help": "AdamW weight decay on >= 2-D parameters."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Linear warm-up steps (default: recipe fraction)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clipping norm; 0 disables."})
    mixed_precision: MixedPrecision = field(
        default="no",
        metadata={"help": "no / bf16 / fp16. Default 'no': on the default run (2 CPU cores) bf16 autocast changed the "
                          "loss curve by < 0.05 but the step time by only 4% (0.111 vs 0.116 s), within noise, and CPUs "
                          "without bf16 instructions get slower; on GPUs with bf16 (A100/H100) use bf16."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for weights, data order, augmentations and masks."})
    tokenizer_fit_batches: int = field(
        default=20, metadata={"help": "Training batches given to the recipe's prepare_model (e.g. SplitMask's tokenizer)."}
    )
    # --- outputs
    output_dir: str | None = field(default=None, metadata={"help": "Run folder (default runs/<method>-<model>)."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the run already in --output_dir (its files are removed first); without it a "
                          "folder holding a run is refused unless --resume_from_checkpoint continues it."},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log every this many optimizer steps."})
    save_steps: int | None = field(default=None, metadata={"help": "Checkpoint every this many optimizer steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (oldest deleted first; >= 1)."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (newest checkpoint in output_dir, or a fresh start) or a checkpoint folder."}
    )
    report_to: str = field(default="tensorboard", metadata={"help": f"Trackers, comma-separated: {', '.join(REPORT_TO_CHOICES)}."})
    knn_evaluation: bool | None = field(
        default=None, metadata={"help": "kNN accuracy vs random init at the end (default: on for the bundled digits)."}
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Upload the run folder (and backbone/ as <hub_model_id>-backbone) at the end."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "org/name of the Hub repo for --push_to_hub."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repos as private."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to (created when missing)."})
    config: str | None = field(default=None, metadata={"help": "YAML file with any of these arguments."})

    @property
    def uses_bundled_dataset(self) -> bool:
        return self.dataset_name in (None, DEFAULT_DATASET_NAME) and not self.data_files and not self.data_dir

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_arguments(argv: list[str] | None = None) -> PretrainingArguments:
    """Parse flags; ``--config file.yaml`` supplies defaults that explicit flags override."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(PretrainingArguments)
    config_path = None
    for index, token in enumerate(argv):
        if token == "--config" and index + 1 < len(argv):
            config_path = argv[index + 1]
        elif token.startswith("--config="):
            config_path = token.split("=", 1)[1]
    if config_path is not None:
        if not Path(config_path).is_file():
            raise ConfigurationError(f"--config {config_path!r}: no such file")
        values = yaml.safe_load(Path(config_path).read_text()) or {}
        known = {item.name for item in dataclasses.fields(PretrainingArguments)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigurationError(f"--config {config_path}: unknown argument(s) {', '.join(unknown)}")
        parser.set_defaults(**values)
    (arguments,) = parser.parse_args_into_dataclasses(args=argv)
    return arguments


def resolve_arguments(arguments: PretrainingArguments) -> PretrainingArguments:
    """Fill the None fields from the bundled default run or the general defaults, then the recipe."""
    recipe = get_recipe(arguments.method) if arguments.method in available_methods() else None
    resolved = dataclasses.replace(arguments)
    run_defaults = BUNDLED_RUN_DEFAULTS if arguments.uses_bundled_dataset else GENERAL_RUN_DEFAULTS
    for name, value in run_defaults.items():
        if getattr(resolved, name) is None:
            setattr(resolved, name, value)
    if recipe is not None:
        if resolved.model is None:
            resolved.model = recipe.default_model
        if resolved.image_size is None:
            resolved.image_size = recipe.image_size_for(resolved.model)
    if resolved.knn_evaluation is None:
        resolved.knn_evaluation = arguments.uses_bundled_dataset
    if resolved.output_dir is None:
        resolved.output_dir = str(Path("runs") / f"{resolved.method}-{resolved.model}")
    return resolved


def model_overrides(arguments: PretrainingArguments) -> dict:
    if not arguments.model_overrides:
        return {}
    try:
        overrides = json.loads(arguments.model_overrides)
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"--model_overrides must be a JSON object: {error}") from error
    if not isinstance(overrides, dict):
        raise ConfigurationError(f"--model_overrides must be a JSON object, got {type(overrides).__name__}")
    return overrides


def validate_arguments(arguments: PretrainingArguments, world_size: int = 1) -> None:
    """Raise `ConfigurationError` for any argument that would fail later (resolved arguments)."""
    if arguments.method not in available_methods():
        raise ConfigurationError(
            f"--method {arguments.method!r} is not a registered method; available: {', '.join(available_methods())}"
        )
    try:
        backbone_preset(arguments.model)
    except ValueError as error:
        raise ConfigurationError(f"--model: {error}") from error
    if arguments.image_size is None or arguments.image_size < 1:
        raise ConfigurationError(f"--image_size must be a positive integer, got {arguments.image_size}")
    if arguments.push_to_hub and not arguments.hub_model_id:
        raise ConfigurationError("--push_to_hub needs --hub_model_id org/name")
    if arguments.max_steps is None or arguments.max_steps < 1:
        raise ConfigurationError(f"--max_steps must be >= 1, got {arguments.max_steps}")
    for name in ("gradient_accumulation_steps", "logging_steps", "save_steps", "save_total_limit", "shuffle_buffer_size"):
        if getattr(arguments, name) < 1:
            raise ConfigurationError(f"--{name} must be >= 1, got {getattr(arguments, name)}")
    if arguments.dataloader_num_workers is None or arguments.dataloader_num_workers < 0 or arguments.tokenizer_fit_batches < 0:
        raise ConfigurationError("--dataloader_num_workers and --tokenizer_fit_batches must be >= 0")
    per_step_divisor = world_size * arguments.gradient_accumulation_steps
    if arguments.total_batch_size is None or arguments.total_batch_size < 1 or arguments.total_batch_size % per_step_divisor:
        raise ConfigurationError(
            f"--total_batch_size {arguments.total_batch_size} must be a positive multiple of "
            f"processes ({world_size}) x gradient_accumulation_steps ({arguments.gradient_accumulation_steps}) = {per_step_divisor}"
        )
    for name in ("image_mean", "image_std"):
        values = getattr(arguments, name)
        if values is not None and len(values) != 3:
            raise ConfigurationError(f"--{name} needs 3 values (R G B), got {values}")
    if arguments.image_std is not None and min(arguments.image_std) <= 0:
        raise ConfigurationError(f"--image_std values must be > 0, got {arguments.image_std}")
    trackers = [name.strip() for name in arguments.report_to.split(",") if name.strip()]
    unknown_trackers = [name for name in trackers if name not in REPORT_TO_CHOICES]
    if unknown_trackers:
        raise ConfigurationError(f"--report_to {arguments.report_to!r}: unknown {unknown_trackers}; choose from {REPORT_TO_CHOICES}")
    if arguments.warmup_steps is not None and not 0 <= arguments.warmup_steps <= arguments.max_steps:
        raise ConfigurationError(f"--warmup_steps must be in [0, max_steps={arguments.max_steps}], got {arguments.warmup_steps}")
    if arguments.resume_from_checkpoint not in (None, "latest") and not Path(arguments.resume_from_checkpoint).is_dir():
        raise ConfigurationError(
            f"--resume_from_checkpoint {arguments.resume_from_checkpoint!r}: no such checkpoint folder (or use 'latest')"
        )
    _validate_model_geometry(arguments)


def _validate_model_geometry(arguments: PretrainingArguments) -> None:
    """Build the model on the meta device (no memory, no time) to check the recipe accepts the
    preset, the image size and the overrides, and that the image size is a multiple of the patch."""
    recipe = get_recipe(arguments.method)
    try:
        with torch.device("meta"):
            model = recipe.build_model(arguments.model, arguments.image_size, model_overrides(arguments))
    except (ValueError, TypeError) as error:
        raise ConfigurationError(f"--method {arguments.method} --model {arguments.model} --image_size {arguments.image_size}: {error}") from error
    patch_size = getattr(model.config, "patch_size", None)
    if isinstance(patch_size, (tuple, list)):
        patch_size = patch_size[0]
    if patch_size and arguments.image_size % int(patch_size):
        raise ConfigurationError(
            f"--image_size {arguments.image_size} must be a multiple of the model's patch_size ({patch_size})"
        )
