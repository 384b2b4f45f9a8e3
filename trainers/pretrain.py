"""Pre-train a self-supervised vision model: ``accelerate launch trainers/pretrain.py [--flags | --config run.yaml]``.

With no arguments it runs the bundled default: SplitMask on a tiny ViT over scikit-learn's
digits (no network, a few minutes on 2 CPU cores), then prints the kNN accuracy of the
pre-trained encoder next to the same encoder at random init. Reads top to bottom:
parse -> Accelerator -> seed -> data -> model -> param groups -> scheduler -> prepare -> resume
-> loop -> save. Everything method-specific comes from the method's recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import sys
from pathlib import Path

# Python puts this script's folder first on sys.path; a sibling script named like a library
# (trainers/evaluate.py vs the `evaluate` package) would then shadow that library. Entry points
# never import each other, so the folder is dropped.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import hf_ssl  # noqa: F401  (registers models with the Auto classes and methods with the recipe registry)
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from hf_ssl.data import (
    DEFAULT_DATASET_NAME,
    DatasetConfigurationError,
    ResumableImageStream,
    TrainingBatches,
    load_image_dataset,
    stream_source,
)
from hf_ssl.hub import PushError, push_run_folder, write_model_card
from hf_ssl.recipes import get_recipe
from hf_ssl.training import (
    ConfigurationError,
    LoopSettings,
    TrainingState,
    build_optimizer,
    cosine_schedule_with_warmup,
    load_checkpoint,
    parse_arguments,
    resolve_arguments,
    scaled_learning_rate,
    train,
    validate_arguments,
)
from hf_ssl.training.arguments import model_overrides
from hf_ssl.training.checkpointing import truncate_training_log
from hf_ssl.training.evaluation import knn_accuracy_on_digits
from hf_ssl.training.loop import TRAINING_LOG_NAME
from hf_ssl.training.outputs import hardware_description, image_processor_for_run, save_run_folder
from hf_ssl.training.run_folder import check_run_folder, prepare_output_dir, resume_arguments
from hf_ssl.training.runtime import configure_cpu_threads, multi_process_cpu_run
from hf_ssl.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

logger = logging.getLogger("hf_ssl.pretrain")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except (ConfigurationError, DatasetConfigurationError) as error:  # e.g. all data undecodable, a damaged checkpoint
        return fail(str(error))


def run(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # ----- parse and validate (before any data is read or weight allocated)
    try:
        arguments = resolve_arguments(parse_arguments(argv))
        world_size = PartialState(cpu=multi_process_cpu_run()).num_processes
        validate_arguments(arguments, world_size=world_size)
        checkpoint = check_run_folder(arguments, world_size)
    except ConfigurationError as error:
        return fail(str(error))
    recipe = get_recipe(arguments.method)
    output_dir = Path(arguments.output_dir)
    image_mean = arguments.image_mean or list(IMAGENET_MEAN)
    image_std = arguments.image_std or list(IMAGENET_STD)

    # ----- accelerator and seed
    trackers = [name.strip() for name in arguments.report_to.split(",") if name.strip() and name.strip() != "none"]
    accelerator = Accelerator(
        cpu=multi_process_cpu_run(),
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
        mixed_precision=arguments.mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    configure_cpu_threads(accelerator.device, accelerator.num_processes, arguments.dataloader_num_workers)
    set_seed(arguments.seed)
    per_device_batch_size = arguments.total_batch_size // (accelerator.num_processes * arguments.gradient_accumulation_steps)

    # ----- data: this process's disjoint part of the stream, decoded and augmented in workers
    try:
        dataset = load_image_dataset(
            arguments.dataset_name,
            dataset_config_name=arguments.dataset_config_name,
            data_dir=arguments.data_dir,
            data_files=arguments.data_files,
            split=arguments.train_split,
            streaming=arguments.streaming,
            cache_dir=arguments.cache_dir,
        )
        source = stream_source(
            dataset,
            arguments.image_column,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            shards_per_process=max(8, arguments.dataloader_num_workers),
        )
    except DatasetConfigurationError as error:
        return fail(str(error))
    transform = build_transform(recipe.augmentation, arguments.image_size, image_mean, image_std)
    stream = ResumableImageStream(
        source,
        arguments.image_column,
        transform,
        seed=arguments.seed,
        shuffle_buffer_size=arguments.shuffle_buffer_size,
        rank=accelerator.process_index,
    )
    batches = TrainingBatches(stream, per_device_batch_size, num_workers=arguments.dataloader_num_workers)

    # ----- model, and the recipe's preparation on training images (the same images on every process)
    model = recipe.build_model(arguments.model, arguments.image_size, model_overrides(arguments))
    random_init_backbone = copy.deepcopy(model.get_backbone()) if arguments.knn_evaluation else None
    fitting_stream = ResumableImageStream(
        stream_source(dataset, arguments.image_column),
        arguments.image_column,
        build_transform("eval", arguments.image_size, image_mean, image_std),
        seed=arguments.seed,
        shuffle_buffer_size=arguments.shuffle_buffer_size,
    )
    fitting_batches = TrainingBatches(fitting_stream, per_device_batch_size, num_workers=arguments.dataloader_num_workers)
    recipe.prepare_model(
        model, (batch["pixel_values"] for batch in itertools.islice(fitting_batches, arguments.tokenizer_fit_batches))
    )
    # From here on every process draws its own masks and noise.
    set_seed(arguments.seed, device_specific=True)

    # ----- optimizer (decay on >= 2-D parameters only) and per-step learning-rate schedule
    defaults = recipe.optimizer
    learning_rate = arguments.learning_rate or scaled_learning_rate(defaults, arguments.total_batch_size)
    optimizer = build_optimizer(model, defaults, learning_rate, arguments.weight_decay)
    warmup_steps = arguments.warmup_steps
    if warmup_steps is None:
        warmup_steps = int(round(defaults.warmup_fraction * arguments.max_steps))
    learning_rates = cosine_schedule_with_warmup(
        learning_rate, learning_rate * defaults.min_learning_rate_ratio, arguments.max_steps, warmup_steps
    )
    max_grad_norm = defaults.gradient_clip_norm if arguments.max_grad_norm is None else arguments.max_grad_norm

    # ----- prepare
    model, optimizer = accelerator.prepare(model, optimizer)

    # ----- resume
    state = TrainingState(world_size=accelerator.num_processes)
    if checkpoint is not None:
        trainer_state, data_state = load_checkpoint(accelerator, checkpoint)
        state = TrainingState(**trainer_state)
        state.skipped_samples = data_state["skipped_samples"]
        batches.load_state_dict(data_state["batches"])
        logger.info("Resumed from %s at step %d", checkpoint, state.step)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, overwrite=arguments.overwrite_output_dir)
        truncate_training_log(output_dir / TRAINING_LOG_NAME, last_step=state.step)
    tracker_config = {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in dataclasses.asdict(arguments).items()
    }
    accelerator.init_trackers("pretrain", config=tracker_config)

    # ----- loop
    settings = LoopSettings(
        max_steps=arguments.max_steps,
        max_grad_norm=max_grad_norm,
        logging_steps=arguments.logging_steps,
        save_steps=arguments.save_steps,
        save_total_limit=arguments.save_total_limit,
        output_dir=str(output_dir),
        run_arguments=resume_arguments(arguments, accelerator.num_processes),
    )
    state = train(accelerator, model, optimizer, recipe, batches, learning_rates, settings, state)

    # ----- save the Hub-ready folder (and, for the bundled data, the kNN check)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        training_arguments = {
            **arguments.to_dict(),
            "method": arguments.method,
            "model": arguments.model,
            "dataset_name": arguments.dataset_name or DEFAULT_DATASET_NAME,
            "image_size": arguments.image_size,
            "image_mean": image_mean,
            "image_std": image_std,
            "max_steps": arguments.max_steps,
            "total_batch_size": arguments.total_batch_size,
            "learning_rate": learning_rate,
            "warmup_steps": warmup_steps,
            "max_grad_norm": max_grad_norm,
            "world_size": accelerator.num_processes,
            "mixed_precision": arguments.mixed_precision,
            "seed": arguments.seed,
            "hardware": hardware_description(accelerator.device),
            "train_runtime_s": round(state.train_runtime_s, 2),
            "num_images_seen": state.num_images_seen,
            "skipped_samples": state.skipped_samples,
        }
        save_run_folder(
            unwrapped, output_dir, image_processor_for_run(arguments.image_size, image_mean, image_std), training_arguments
        )
        if arguments.knn_evaluation:
            results = knn_accuracy_on_digits(
                {"pretrained": unwrapped.get_backbone(), "random_init": random_init_backbone},
                arguments.image_size,
                image_mean,
                image_std,
            )
            # One entry for this model; the random-init score is its baseline, not a result of its own.
            knn_result = {**results["pretrained"], "random_init_accuracy": results["random_init"]["accuracy"]}
            (output_dir / "eval_results.json").write_text(json.dumps({"knn": knn_result}, indent=2) + "\n")
            print(
                f"kNN accuracy on digits (k=20): pre-trained {results['pretrained']['accuracy']:.4f} | "
                f"random init {results['random_init']['accuracy']:.4f}"
            )
        # ----- model card (README.md, loss curve, prediction figure): the folder is Hub-ready
        try:
            write_model_card(output_dir, repo_id=arguments.hub_model_id)
        except Exception as error:  # the weights are saved; a figure problem must not lose the run
            logger.warning("Model card not written (%s); `python trainers/push.py` writes it before uploading", error)
        print(f"Hub-ready folder written to {output_dir.resolve()} (encoder alone: {(output_dir / 'backbone').resolve()})")
        if arguments.push_to_hub:
            try:
                pushed = push_run_folder(
                    output_dir, arguments.hub_model_id, private=arguments.hub_private_repo, revision=arguments.hub_revision
                )
            except PushError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            print(f"Pushed to the Hub: {pushed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
