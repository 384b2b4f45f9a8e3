"""Arguments of ``hf-ssl pretrain``: the common dataclass plus the method's own, from flags and/or YAML.

Every field is a command-line flag (``--max_steps 1000``); ``--config run.yaml`` reads the same
names from a file, and flags given next to it win. ``--preset NAME`` starts from a published
configuration of a method (`Recipe.presets`, listed in docs/recipes.md), under YAML and flags. The chosen method's recipe may add flags of
its own (`Recipe.arguments_class`, e.g. DINO's ``--local_crops_number``); ``--method X --help``
lists them. Fields left at None are resolved from the method's recipe (model, image size,
learning rate, warm-up, clipping) or, when no dataset is given, from the bundled default run
(digits, vit-micro, 32 px). `validate_arguments` rejects unusable combinations before any data is
read or any weight is allocated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import yaml
from transformers import HfArgumentParser

from hf_ssl.backbones import BackboneSpec, available_presets, resolve_backbone
from hf_ssl.command_line import OneLineHelpFormatter, flag_names, unrecognized_arguments_message
from hf_ssl.data.default import bundled_image_size, bundled_variant
from hf_ssl.recipes import BuildContext, Preset, Recipe, available_methods, get_recipe
from hf_ssl.training.attention import AttentionChoice
from hf_ssl.training.compilation import CompileChoice

from .errors import ConfigurationError

MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
REPORT_TO_CHOICES = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "all", "none")

# The run `python trainers/pretrain.py` makes with no arguments (and any run on bundled data): the
# bundled digit scenes at 48 px, on the method's small-image backbone (`bundled_backbone`), sized to
# pre-train and report within 10 minutes on 2 CPU cores (measured values in README, "Quick start").
BUNDLED_RUN_DEFAULTS = dict(max_steps=2000, total_batch_size=64, learning_rate=5e-4, save_steps=500, dataloader_num_workers=1)


def bundled_backbone(recipe: Recipe) -> str:
    """The small-image backbone a method trains on bundled data: the conv net where the method takes
    one (supervised from random init it reaches 0.93-0.96 on the scenes, the ViT 0.71), else the ViT
    (or the recipe's own `bundled_model`)."""
    if recipe.bundled_model:
        return recipe.bundled_model
    return "resnet-micro" if {"any", "resnet"} & set(recipe.supported_backbones) else "vit-micro"
# The end-of-run report's protocols (`hf_ssl.eval.report.REPORT_PLAN` says with which labels).
REPORT_PROTOCOLS = ("knn", "linear", "finetune")
# The baselines an encoder is compared with (hf_ssl.eval.runner.BASELINES), named here so that parsing
# arguments does not import the evaluation code.
REPORT_BASELINES = ("random_init", "raw_pixels", "supervised")
# ``pretrained:<model>``: another checkpoint as a baseline (hf_ssl.eval.runner.PRETRAINED_PREFIX).
PRETRAINED_BASELINE_PREFIX = "pretrained:"
# Any other dataset: a real run, the recipe's published optimizer settings.
GENERAL_RUN_DEFAULTS = dict(total_batch_size=256, save_steps=1000, dataloader_num_workers=4)


@dataclass
class PretrainingArguments:
    """Everything a pre-training run needs; `None` means "the recipe's / default run's value"."""

    # --- method and model
    method: str = field(default="simclr", metadata={"help": "Pre-training method (a registered recipe)."})
    preset: str | None = field(
        default=None,
        metadata={"help": "A published configuration (model, optimizer, schedule, augmentation; docs/recipes.md), "
                          "e.g. mae-vit-base-1600ep; it implies --method, and explicit flags win. --recipe, its earlier "
                          "name, is still accepted."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": f"Backbone: a preset ({', '.join(available_presets())}), a transformers model folder or Hub "
                          "id (ViT, Swin, ConvNeXt, ResNet, DINOv2, ...) or timm/<name> (default: the recipe's)."},
    )
    from_scratch: bool = field(
        default=False, metadata={"help": "With a checkpoint as --model: use its architecture only, not its weights."}
    )
    model_overrides: str | None = field(
        default=None, metadata={"help": 'JSON dict of model config fields, e.g. \'{"mask_ratio": 0.5}\'.'}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Square input side in pixels (default: the recipe's; on your own data with a backbone preset, "
                          "the median side of the first images, up to the recipe's)."},
    )
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
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Pre-train on the first N rows of the split only (a data-fraction study, a quick check)."},
    )
    shuffle_buffer_size: int = field(
        default=1000, metadata={"help": "Rows per shuffled block per worker (exactly resumable block shuffle)."}
    )
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={"help": "Decoding/augmentation worker processes per process (default: "
                          f"{BUNDLED_RUN_DEFAULTS['dataloader_num_workers']} on the bundled data, else the process's cores "
                          f"less one, at most {GENERAL_RUN_DEFAULTS['dataloader_num_workers']})."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    # --- optimisation
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps to train for."})
    total_batch_size: int | None = field(
        default=None,
        metadata={"help": "Images per optimizer step over all processes and accumulation steps (default: "
                          f"{BUNDLED_RUN_DEFAULTS['total_batch_size']} on the bundled data, else "
                          f"{GENERAL_RUN_DEFAULTS['total_batch_size']}, or less for a dataset too small for it)."},
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate (default: recipe base LR scaled by total_batch_size)."}
    )
    weight_decay: float | None = field(default=None, metadata={"help": "AdamW weight decay (default: the recipe's); norms, biases, tokens and position embeddings are exempt as in each method's official code."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Linear warm-up steps (default: recipe fraction)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clipping norm; 0 disables."})
    mixed_precision: MixedPrecision = field(
        default="auto",
        metadata={"help": "auto / no / bf16 / fp16. auto = bf16 autocast where the hardware computes bf16 natively "
                          "(CUDA GPUs with bf16; CPUs with AVX512-BF16 or AMX), fp32 otherwise (elsewhere bf16 is emulated: slower)."},
    )
    attention: AttentionChoice = field(
        default="auto",
        metadata={"help": "auto / sdpa / eager / lean: the attention kernel while training. eager = explicit matmuls, "
                          "fp32 softmax (transformers' eager); lean = eager keeping only the bf16 probabilities for the "
                          "backward (half the attention memory). auto = lean on CPU under bf16, where torch's SDPA "
                          "kernels are slower at ViT lengths, else SDPA. Saved models load with SDPA either way."},
    )
    compile: CompileChoice = field(
        default="auto",
        metadata={"help": "auto / yes / no: torch.compile the model (forward and loss; backward through AOTAutograd). "
                          "auto = only where the measured compile time is paid back by the run's steps. A compile "
                          "failure never stops the run: that part runs eagerly, with a warning."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute each transformer block's activations in the backward pass instead of keeping them "
                          "(transformers' name for activation checkpointing): less memory for about a third more compute "
                          "per step. transformers blocks and timm models."},
    )
    cpu_allocator_cache: bool = field(
        default=True,
        metadata={"help": "On CPU (Linux, glibc): keep the memory a step frees for the next step instead of returning it "
                          "to the OS, which otherwise page-faults every step's activations in again (README: Training). "
                          "--cpu_allocator_cache false keeps glibc's default."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for weights, data order, augmentations and masks."})
    preparation_rows: int = field(
        default=10000, metadata={"help": "Raw training rows a method may read before training (e.g. to train a text tokenizer)."}
    )
    tokenizer_fit_batches: int = field(
        default=20, metadata={"help": "Batches given to the recipe's preparation before training (SplitMask's tokenizer)."}
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
    report_protocols: list[str] | None = field(
        default=None,
        metadata={"help": "Protocols of the report printed at the end, each next to random init, raw pixels and "
                          "supervised: any of knn linear finetune (fine-tuning with 10%% of the labels), or none. "
                          "Default: all three on bundled data or with --eval_dataset_name, none otherwise."},
    )
    report_baselines: list[str] | None = field(
        default=None,
        metadata={"help": "Baselines of that report: any of random_init raw_pixels supervised (trains the same "
                          "architecture from random init on the labels: the slowest of the three), and "
                          "pretrained:<model folder or Hub id> (e.g. an ImageNet model). Default: the first three, and "
                          "the starting weights when --model holds some (continued pre-training)."},
    )
    eval_steps: int | None = field(
        default=None,
        metadata={"help": "Online kNN of the encoder every this many steps, logged as online_knn_accuracy (off by default)."},
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Labelled dataset (train + test splits, columns image/label) for --eval_steps; default: the "
                          "bundled digits (digit-scenes when pre-training on them)."},
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
        return bundled_variant(self.dataset_name) is not None and not self.data_files and not self.data_dir

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    """Every ``--preset`` value: the presets of every registered method."""
    return sorted(preset.name for method in available_methods() for preset in get_recipe(method).presets)


def find_preset(name: str) -> tuple[str, Preset]:
    """``(method, preset)`` of the preset `name` among every registered method's `Recipe.presets`."""
    found = [(method, preset) for method in available_methods() for preset in get_recipe(method).presets
             if preset.name == name]
    if not found:
        raise ConfigurationError(f"--preset {name!r} is not a published configuration; available: {', '.join(preset_names())}")
    return found[0]


class _PretrainingParser(HfArgumentParser):
    """`HfArgumentParser` whose own mistakes (a value of the wrong type, a missing value) are the run's
    one-line `ConfigurationError` instead of argparse's usage block."""

    def error(self, message: str):
        raise ConfigurationError(message)


def _unrecognized_flags(unknown: list[str], parser: HfArgumentParser, method: str) -> ConfigurationError:
    """The error for flags no dataclass of this method has; a flag of another method says which."""
    message = unrecognized_arguments_message(unknown, flag_names(parser))
    flag = next((item.split("=", 1)[0] for item in unknown if item.startswith("--")), "")
    owners = [name for name in available_methods() if get_recipe(name).arguments_class is not None
              and flag[2:].replace("-", "_") in {item.name for item in dataclasses.fields(get_recipe(name).arguments_class)}]
    if owners:
        message += f": it is a flag of --method {' / '.join(owners)}, not of --method {method}"
    return ConfigurationError(message)


def _method_and_config(argv: list[str]) -> tuple[str, dict, str | None, Preset | None]:
    """``--method`` (flag, else YAML, else the preset's, else the default), the YAML values and the
    ``--preset``, read before the full parse."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--method", default=None)
    early.add_argument("--config", default=None)
    early.add_argument("--preset", default=None)
    known, _ = early.parse_known_args(argv)
    values: dict = {}
    if known.config is not None:
        if not Path(known.config).is_file():
            raise ConfigurationError(f"--config {known.config!r}: no such file")
        try:
            values = yaml.safe_load(Path(known.config).read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigurationError(f"--config {known.config}: not valid YAML ({str(error).splitlines()[0]})") from error
        if not isinstance(values, dict):
            raise ConfigurationError(f"--config {known.config}: expected a mapping of argument names to values")
    method = known.method or values.get("method")
    preset = None
    if "recipe" in values:  # a YAML written before presets had their name
        values["preset"] = values.pop("recipe")
    preset_name = known.preset or values.get("preset")
    if preset_name:
        preset_method, preset = find_preset(preset_name)
        if method not in (None, preset_method):
            raise ConfigurationError(f"--preset {preset_name} is a {preset_method} configuration, not --method {method}")
        method = preset_method
    return method or PretrainingArguments.method, values, known.config, preset


def _apply_preset_rules(arguments: PretrainingArguments, preset: Preset, recipe: Recipe) -> None:
    """What a preset derives from the run's values: merged model overrides, the linearly scaled
    learning rate and the warm-up steps (each unless the user set it)."""
    user_overrides = model_overrides(arguments)
    arguments.model_overrides = json.dumps({**preset.model_overrides, **user_overrides})
    if arguments.learning_rate is None and arguments.total_batch_size is not None:
        base = preset.base_learning_rate if preset.base_learning_rate is not None else recipe.optimizer.base_learning_rate
        reference = preset.reference_batch_size or recipe.optimizer.reference_batch_size
        arguments.learning_rate = base * arguments.total_batch_size / reference
    if arguments.warmup_steps is None and preset.warmup_fraction is not None:
        if arguments.max_steps is None:
            raise ConfigurationError(
                f"--preset {preset.name} warms up for {preset.warmup_fraction:g} of the run: give --max_steps "
                f"(its {preset.epochs} published epochs are {preset.epochs} x images / total_batch_size steps)"
            )
        arguments.warmup_steps = int(round(preset.warmup_fraction * arguments.max_steps))


def parse_arguments(argv: list[str] | None = None) -> tuple[PretrainingArguments, object | None]:
    """Parse flags into ``(arguments, method_arguments)``; ``--preset NAME`` and ``--config file.yaml``
    supply defaults (the YAML over the preset) that explicit flags override. `method_arguments` is
    the recipe's `arguments_class` instance (None when the method has no flags of its own)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --recipe: the earlier name of --preset, still accepted
    argv = [f"--preset{item[len('--recipe'):]}" if item == "--recipe" or item.startswith("--recipe=") else item
            for item in argv]
    method, values, config_path, preset = _method_and_config(argv)
    if method not in available_methods():
        raise ConfigurationError(f"--method {method!r} is not a registered method; available: {', '.join(available_methods())}")
    recipe = get_recipe(method)
    dataclass_types = [PretrainingArguments] + ([recipe.arguments_class] if recipe.arguments_class else [])
    parser = _PretrainingParser(dataclass_types, prog="hf-ssl pretrain", formatter_class=OneLineHelpFormatter,
                                description=f"Pre-train with --method {method}: {recipe.description}")
    for action in parser._actions:  # list the registered names in --help (the early parse has checked them)
        if action.dest == "method":
            action.choices = available_methods()
        elif action.dest == "preset":
            action.choices = preset_names()
    known = {item.name for dataclass_type in dataclass_types for item in dataclasses.fields(dataclass_type)}
    if values:
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigurationError(f"--config {config_path}: unknown argument(s) {', '.join(unknown)} for --method {method}")
    defaults = {**preset.arguments, "method": method, "preset": preset.name} if preset else {}
    defaults.update(values)
    if defaults:
        parser.set_defaults(**defaults)
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise _unrecognized_flags(unknown, parser, method)
    if preset is not None:
        _apply_preset_rules(parsed[0], preset, recipe)
    return parsed[0], (parsed[1] if len(parsed) > 1 else None)


def resolve_arguments(arguments: PretrainingArguments) -> PretrainingArguments:
    """Fill the None fields from the bundled default run or the general defaults, then the recipe."""
    recipe = get_recipe(arguments.method) if arguments.method in available_methods() else None
    resolved = dataclasses.replace(arguments)
    from .runtime import choose_mixed_precision, default_dataloader_workers, multi_process_cpu_run

    run_defaults = dict(BUNDLED_RUN_DEFAULTS if arguments.uses_bundled_dataset else GENERAL_RUN_DEFAULTS)
    if not arguments.uses_bundled_dataset:  # the general count, where the machine has the cores for it
        run_defaults["dataloader_num_workers"] = default_dataloader_workers(most=run_defaults["dataloader_num_workers"])
    if arguments.uses_bundled_dataset:
        variant = bundled_variant(arguments.dataset_name)
        run_defaults["image_size"] = bundled_image_size(variant)
        if recipe is not None:
            run_defaults.update(model=bundled_backbone(recipe), **recipe.bundled_run_defaults)
        if resolved.eval_dataset_name is None:  # online kNN on the bundled data being learned
            resolved.eval_dataset_name = arguments.dataset_name
    for name, value in run_defaults.items():
        if getattr(resolved, name) is None:
            setattr(resolved, name, value)
    if recipe is not None:
        if resolved.model is None:
            resolved.model = recipe.default_model
        if resolved.image_size is None:
            resolved.image_size = recipe.image_size_for(resolved.model)
    resolved.mixed_precision, _ = choose_mixed_precision(arguments.mixed_precision, use_cpu=multi_process_cpu_run())
    if resolved.report_protocols is None:
        resolved.report_protocols = list(REPORT_PROTOCOLS) if arguments.uses_bundled_dataset or arguments.eval_dataset_name else []
    resolved.report_protocols = [name for name in resolved.report_protocols if name != "none"]
    if resolved.report_baselines is None:
        resolved.report_baselines = list(REPORT_BASELINES)
    if resolved.output_dir is None:
        model_name = Path(resolved.model).name if Path(resolved.model).exists() else resolved.model.replace("/", "-")
        suffix = f"-{arguments.dataset_name}" if bundled_variant(arguments.dataset_name) == "digits" else ""
        resolved.output_dir = str(Path("runs") / f"{resolved.method}-{model_name}{suffix}")
    return resolved


def with_starting_weights_baseline(arguments: PretrainingArguments, starting_weights: str | None) -> PretrainingArguments:
    """A run that continues from a checkpoint's weights reports next to that checkpoint as well
    (``pretrained:<weights>``): whether training on these images beat what the user started from."""
    baseline = f"{PRETRAINED_BASELINE_PREFIX}{starting_weights}"
    if starting_weights is None or not arguments.report_protocols or baseline in arguments.report_baselines:
        return arguments
    return dataclasses.replace(arguments, report_baselines=[*arguments.report_baselines, baseline])


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


def validate_arguments(arguments: PretrainingArguments, method_arguments=None, world_size: int = 1) -> BackboneSpec:
    """Raise `ConfigurationError` for any argument that would fail later (resolved arguments).

    Returns:
        The resolved ``--model``.
    """
    if arguments.method not in available_methods():
        raise ConfigurationError(
            f"--method {arguments.method!r} is not a registered method; available: {', '.join(available_methods())}"
        )
    if arguments.image_size is None or arguments.image_size < 1:
        raise ConfigurationError(f"--image_size must be a positive integer, got {arguments.image_size}")
    try:
        backbone = resolve_backbone(arguments.model, arguments.image_size, from_scratch=arguments.from_scratch)
    except ValueError as error:
        raise ConfigurationError(str(error)) from error
    if arguments.push_to_hub and not arguments.hub_model_id:
        raise ConfigurationError("--push_to_hub needs --hub_model_id org/name")
    if arguments.max_steps is None:
        raise ConfigurationError("--max_steps N is needed outside the bundled data: how many optimizer steps to train")
    if arguments.max_steps < 1:
        raise ConfigurationError(f"--max_steps must be >= 1, got {arguments.max_steps}")
    if arguments.max_train_samples is not None and arguments.max_train_samples < 1:
        raise ConfigurationError(f"--max_train_samples must be >= 1, got {arguments.max_train_samples}")
    if arguments.eval_steps is not None and arguments.eval_steps < 1:
        raise ConfigurationError(f"--eval_steps must be >= 1, got {arguments.eval_steps}")
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
    unknown_protocols = sorted(set(arguments.report_protocols or ()) - set(REPORT_PROTOCOLS))
    if unknown_protocols:
        raise ConfigurationError(f"--report_protocols {' '.join(unknown_protocols)}: choose from {', '.join(REPORT_PROTOCOLS)} or none")
    unknown_baselines = sorted(name for name in set(arguments.report_baselines or ()) - set(REPORT_BASELINES)
                               if not (name.startswith(PRETRAINED_BASELINE_PREFIX) and len(name) > len(PRETRAINED_BASELINE_PREFIX)))
    if unknown_baselines:
        raise ConfigurationError(f"--report_baselines {' '.join(unknown_baselines)}: choose from {', '.join(REPORT_BASELINES)} "
                                 f"or {PRETRAINED_BASELINE_PREFIX}<model folder or Hub id>")
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
    recipe = get_recipe(arguments.method)
    _validate_model_geometry(arguments, recipe, build_context(arguments, method_arguments, recipe, backbone), world_size)
    return backbone


def build_context(arguments: PretrainingArguments, method_arguments, recipe: Recipe, backbone: BackboneSpec) -> BuildContext:
    """What the recipe builds its model and transform from."""
    from hf_ssl.transforms import IMAGENET_MEAN, IMAGENET_STD

    return BuildContext(
        backbone=backbone,
        image_size=arguments.image_size,
        model_overrides=model_overrides(arguments),
        method_arguments=method_arguments,
        image_mean=tuple(arguments.image_mean or IMAGENET_MEAN),
        image_std=tuple(arguments.image_std or IMAGENET_STD),
        columns=recipe.columns(arguments, method_arguments),
    )


def _validate_model_geometry(arguments: PretrainingArguments, recipe: Recipe, context: BuildContext, world_size: int) -> None:
    """Build the model on the meta device (no memory, no time) to check the recipe accepts the
    backbone, the image size and the overrides, that the image size is a multiple of the patch,
    and that the model's training state fits the device's memory."""
    from .model_size import check_model_fits, training_device
    from .sharding import fsdp_requested

    try:
        with torch.device("meta"):
            model = recipe.build_model(context)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigurationError(f"--method {arguments.method} --model {arguments.model} --image_size {arguments.image_size}: {error}") from error
    check_model_fits(model, training_device(), shards=world_size if fsdp_requested() else 1, name=f"--model {arguments.model}")
    patch_size = getattr(model.config, "patch_size", None)
    if isinstance(patch_size, (tuple, list)):
        patch_size = patch_size[0]
    if patch_size and arguments.image_size % int(patch_size):
        raise ConfigurationError(
            f"--image_size {arguments.image_size} must be a multiple of the model's patch_size ({patch_size})"
        )
