"""Pre-train a self-supervised vision model: ``hf-ssl pretrain`` / ``accelerate launch -m hf_ssl.cli.pretrain``.

With no arguments it runs the bundled default: SplitMask on a tiny ViT over scikit-learn's
digits (no network, a few minutes on 2 CPU cores), then prints the kNN accuracy of the
pre-trained encoder next to its baselines. Reads top to bottom:
parse -> Accelerator -> seed -> data -> model -> param groups -> schedules -> prepare -> resume
-> loop -> save -> evaluate -> card. Everything method-specific comes from the method's recipe.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
from pathlib import Path

import datasets
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors import SafetensorError

import hf_ssl  # noqa: F401  (registers models with the Auto classes and methods with the recipe registry)
from hf_ssl.backbones import default_image_processor, load_pretrained_backbone
from hf_ssl.data import (
    DEFAULT_DATASET_NAME,
    DatasetConfigurationError,
    ResumableRowStream,
    TrainingBatches,
    load_image_dataset,
    stream_source,
)
from hf_ssl.hub import PushError, push_run_folder, write_model_card
from hf_ssl.recipes import ScheduleContext, get_recipe
from hf_ssl.training import (
    ConfigurationError,
    LoopSettings,
    TrainingState,
    build_context,
    build_optimizer,
    check_run_folder,
    check_output_dir,
    load_checkpoint,
    prepare_output_dir,
    resume_arguments,
    parse_arguments,
    resolve_arguments,
    train,
    validate_arguments,
)
from hf_ssl.training.activation_recomputation import use_activation_checkpointing
from hf_ssl.training.arguments import with_starting_weights_baseline
from hf_ssl.training.attention import resolve_attention, use_attention
from hf_ssl.training.compilation import compile_in_place, resolve_compile
from hf_ssl.training.disk_space import is_disk_full
from hf_ssl.training.interruption import RunInterrupted, StopRequests
from hf_ssl.training.optimizer import resolve_optimization
from hf_ssl.training.checkpointing import truncate_training_log
from hf_ssl.training.loop import TRAINING_LOG_NAME
from hf_ssl.training.outputs import hardware_description, save_run_folder
from hf_ssl.training.plan import describe_plan
from hf_ssl.training.run_lock import lock_run_folder_for_all_processes
from hf_ssl.training.runtime import (
    configure_cpu_threads,
    exit_launched_process,
    forget_previous_run_state,
    keep_freed_host_memory,
    launched_process_count,
    multi_process_cpu_run,
)
from hf_ssl.training.sharding import (
    check_fsdp_launch,
    check_shardable,
    ignore_view_output_warning,
    is_fully_sharded,
    launch_flag,
    shard_summary,
    use_autocast_under_fsdp,
    use_fsdp_on_cpu,
    whole_model,
)
from hf_ssl.training.sizing import size_from_data
from hf_ssl.transforms import ImageRowTransform, RowsByRole, build_transform

logger = logging.getLogger("hf_ssl.pretrain")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def check_schedules(schedules: dict, max_steps: int, recipe_name: str) -> None:
    """A recipe's schedules must give the optimizer its two values at every step."""
    for required in ("learning_rate", "weight_decay"):
        if required not in schedules:
            raise ValueError(f"recipe {recipe_name!r}: schedules() has no {required!r}")
    for name, values in schedules.items():
        if values.ndim != 1 or len(values) != max_steps:
            raise ValueError(f"recipe {recipe_name!r}: schedule {name!r} has shape {tuple(values.shape)}, expected ({max_steps},)")


def steps_per_epoch(dataset, per_device_batch_size: int, world_size: int, accumulation: int) -> int | None:
    """Optimizer steps per pass over a dataset of known length (None for a stream)."""
    try:
        length = len(dataset)
    except TypeError:
        return None
    return max(1, length // (world_size * per_device_batch_size * accumulation))


def first_rows(dataset, count: int):
    """The first `count` rows of a dataset or stream (the bundled splits are already shuffled once)."""
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(range(min(count, len(dataset))))
    return dataset.take(count)


UNSUPPORTED_LAUNCH_VARIABLES = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def refuse_unsupported_launch() -> None:
    """Stop a DeepSpeed / Megatron-LM launch (or FSDP1) before any work: hf-ssl's checkpoints
    (safetensors + JSON) hold whole states, which it gathers from DDP and FSDP2 runs only."""
    for variable, name in UNSUPPORTED_LAUNCH_VARIABLES.items():
        if launch_flag(variable):
            raise ConfigurationError(
                f"{name} launches are not supported: hf-ssl checkpoints hold whole (not sharded) model and optimizer "
                "states; shard with FSDP2 instead (accelerate launch --config_file recipes/accelerate/fsdp.yaml)"
            )
    check_fsdp_launch()


def main(argv: list[str] | None = None) -> int:
    exit_code = run_until_stopped(argv)
    if launched_process_count() > 1:
        exit_launched_process(exit_code)
    return exit_code


def run_until_stopped(argv: list[str] | None = None) -> int:
    """`run`, with signals, configuration errors and a full disk answered by an exit code and one line."""
    stop_requests = StopRequests().install()
    try:
        return run(argv, stop_requests)
    except RunInterrupted as error:  # SIGINT / SIGTERM: one line (from the main process), exit 128 + signal
        if stop_requests.announce:
            print(str(error), file=sys.stderr)
        return error.exit_code
    except (ConfigurationError, DatasetConfigurationError) as error:  # e.g. all data undecodable, a damaged checkpoint
        return fail(str(error))
    except (OSError, SafetensorError) as error:
        if not is_disk_full(error):  # the saves name their folder and the space needed; this covers any other write
            raise
        return fail(f"no space left on the device ({error}): free space, then run the same command with "
                    "--resume_from_checkpoint latest")
    finally:
        stop_requests.uninstall()


def run(argv: list[str] | None = None, stop_requests: StopRequests | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # ----- parse and validate, the run folder included (before any weight is allocated; of the data,
    # only the first rows' image headers, where the image size or the batch comes from the data)
    requested, method_arguments = parse_arguments(argv)  # `requested`: None where the user set nothing
    arguments = resolve_arguments(requested)
    refuse_unsupported_launch()
    world_size = PartialState(cpu=multi_process_cpu_run()).num_processes
    # the folder first, since sizing from the data reads its first rows; checked again under the lock below
    # (another run may have written it in between)
    check_output_dir(arguments.output_dir, overwrite=arguments.overwrite_output_dir, resume=arguments.resume_from_checkpoint)
    if stop_requests is not None:
        stop_requests.output_dir, stop_requests.announce = Path(arguments.output_dir), PartialState().is_main_process
    arguments, sized = size_from_data(requested, arguments, method_arguments, world_size)
    backbone = validate_arguments(arguments, method_arguments, world_size=world_size)
    arguments = with_starting_weights_baseline(arguments, backbone.weights)
    run_lock = lock_run_folder_for_all_processes(arguments.output_dir)  # noqa: F841 (held until the run ends)
    checkpoint = check_run_folder(arguments, world_size, method_arguments)
    recipe = get_recipe(arguments.method)
    context = build_context(arguments, method_arguments, recipe, backbone)
    output_dir = Path(arguments.output_dir)

    # ----- accelerator and seed
    trackers = [name.strip() for name in arguments.report_to.split(",") if name.strip() and name.strip() != "none"]
    forget_previous_run_state()
    accelerator = Accelerator(
        cpu=multi_process_cpu_run(),
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
        mixed_precision=arguments.mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    use_fsdp_on_cpu(accelerator)
    configure_cpu_threads(accelerator.device, accelerator.num_processes, arguments.dataloader_num_workers)
    if arguments.cpu_allocator_cache:
        keep_freed_host_memory(accelerator.device)
    set_seed(arguments.seed)
    per_device_batch_size = arguments.total_batch_size // (accelerator.num_processes * arguments.gradient_accumulation_steps)
    attention = resolve_attention(arguments.attention, accelerator.device, accelerator.mixed_precision)
    compiling = resolve_compile(arguments.compile, accelerator.device, arguments.method, arguments.max_steps)
    if accelerator.is_main_process:
        print(describe_plan(requested, arguments, sized=sized, views=recipe.describe_views(context), world_size=world_size,
                            device=hardware_description(accelerator.device), attention=attention, compiling=compiling,
                            checkpoint=checkpoint))

    # ----- data: this process's disjoint part of the stream, decoded and transformed in workers
    columns = context.columns  # {role: dataset column}
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
        if arguments.max_train_samples is not None:
            dataset = first_rows(dataset, arguments.max_train_samples)
        source = stream_source(
            dataset,
            list(columns.values()),
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            shards_per_process=max(8, arguments.dataloader_num_workers),
        )
        if recipe.prepares_inputs:
            preparation_rows = stream_source(dataset, list(columns.values()))
            recipe.prepare_inputs(
                context,
                ({role: row[column] for role, column in columns.items()}
                 for row in itertools.islice(preparation_rows, arguments.preparation_rows)),
            )
    except DatasetConfigurationError as error:
        return fail(str(error))
    stream = ResumableRowStream(
        source,
        list(columns.values()),
        RowsByRole(columns, recipe.build_transform(context)),
        seed=arguments.seed,
        shuffle_buffer_size=arguments.shuffle_buffer_size,
        rank=accelerator.process_index,
    )
    batches = TrainingBatches(stream, per_device_batch_size, num_workers=arguments.dataloader_num_workers)

    # ----- model, and the recipe's preparation on training images (the same images on every process)
    model = recipe.build_model(context)
    if is_fully_sharded(accelerator):
        check_shardable(model)
        use_autocast_under_fsdp(accelerator, model)
    if backbone.weights is not None:
        model.load_backbone_weights(load_pretrained_backbone(backbone.nested(), backbone.weights))
        logger.info("Backbone initialised from %s", backbone.weights)
    if recipe.prepares_model:
        image_column = columns["image"]
        fitting_stream = ResumableRowStream(
            stream_source(dataset, [image_column]),
            [image_column],
            RowsByRole({"image": image_column},
                       ImageRowTransform(build_transform("eval", arguments.image_size, context.image_mean, context.image_std))),
            seed=arguments.seed,
            shuffle_buffer_size=arguments.shuffle_buffer_size,
        )
        fitting_batches = TrainingBatches(fitting_stream, per_device_batch_size, num_workers=arguments.dataloader_num_workers)
        recipe.prepare_model(
            model, (batch["pixel_values"] for batch in itertools.islice(fitting_batches, arguments.tokenizer_fit_batches))
        )
        fitting_batches.close()
    if attention != "sdpa" and use_attention(model, attention):
        logger.info("Attention: %s (--attention %s)", attention, arguments.attention)
    if arguments.gradient_checkpointing:
        recomputed = use_activation_checkpointing(model)
        if not recomputed:
            raise ConfigurationError(f"--gradient_checkpointing: {type(model).__name__} has no transformers blocks or timm "
                                     "model whose activations can be recomputed")
        logger.info("Activation checkpointing: %d blocks (or timm models) recompute their activations in the backward", recomputed)
    if compiling[0]:
        compile_in_place(model)
    # From here on every process draws its own masks and noise.
    set_seed(arguments.seed, device_specific=True)

    # ----- optimizer over the recipe's parameter groups, and its per-step schedules
    optimization = resolve_optimization(arguments, recipe.optimizer)
    learning_rate, weight_decay = optimization["learning_rate"], optimization["weight_decay"]
    warmup_steps, max_grad_norm = optimization["warmup_steps"], optimization["max_grad_norm"]
    optimizer = build_optimizer(recipe.parameter_groups(model, weight_decay), recipe.optimizer, learning_rate)
    schedules = recipe.schedules(
        ScheduleContext(
            max_steps=arguments.max_steps,
            warmup_steps=warmup_steps,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            steps_per_epoch=steps_per_epoch(dataset, per_device_batch_size, accelerator.num_processes,
                                            arguments.gradient_accumulation_steps),
            method_arguments=method_arguments,
        )
    )
    check_schedules(schedules, arguments.max_steps, recipe.name)

    # ----- prepare
    model, optimizer = accelerator.prepare(model, optimizer)
    if is_fully_sharded(accelerator):
        ignore_view_output_warning()
        logger.info("FSDP (shard unit: %s): %s", ", ".join(sorted(accelerator.unwrap_model(model)._no_split_modules)),
                    shard_summary(model))

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

    # ----- loop (with the online kNN check when asked for)
    periodic_evaluation = None
    if arguments.eval_steps and accelerator.is_main_process:
        from hf_ssl.eval.online import OnlineKNN

        periodic_evaluation = OnlineKNN(arguments.eval_dataset_name, arguments.image_size, context.image_mean, context.image_std)
    settings = LoopSettings(
        max_steps=arguments.max_steps,
        max_grad_norm=max_grad_norm,
        logging_steps=arguments.logging_steps,
        save_steps=arguments.save_steps,
        save_total_limit=arguments.save_total_limit,
        output_dir=str(output_dir),
        eval_steps=arguments.eval_steps,
        periodic_evaluation=periodic_evaluation,
        run_arguments=resume_arguments(arguments, accelerator.num_processes, method_arguments=method_arguments),
        stop_requests=stop_requests,
    )
    try:
        state = train(accelerator, model, optimizer, recipe, batches, schedules, settings, state)
    finally:
        batches.close()

    # ----- save the Hub-ready folder, evaluate on the bundled data, write the card
    accelerator.wait_for_everyone()
    unwrapped = whole_model(accelerator, model)  # under FSDP gathered from the shards (every process takes part)
    accelerator.end_training()
    if accelerator.is_main_process:
        training_arguments = {
            **arguments.to_dict(),
            **({"method_arguments": dataclasses.asdict(method_arguments)} if method_arguments is not None else {}),
            "columns": columns,
            "dataset_name": arguments.dataset_name or DEFAULT_DATASET_NAME,
            "image_mean": list(context.image_mean),
            "image_std": list(context.image_std),
            "backbone_source": backbone.source,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "warmup_steps": warmup_steps,
            "max_grad_norm": max_grad_norm,
            "world_size": accelerator.num_processes,
            "attention": attention,
            "compiled": compiling[0],
            "hardware": hardware_description(accelerator.device),
            "train_runtime_s": round(state.train_runtime_s, 2),
            "num_images_seen": state.num_images_seen,
            "skipped_samples": state.skipped_samples,
        }
        image_processor = default_image_processor(arguments.image_size, context.image_mean, context.image_std)
        save_run_folder(unwrapped, output_dir, image_processor, training_arguments)
        recipe.save_extra_files(unwrapped, context, output_dir)
        if arguments.report_protocols:
            from hf_ssl.eval.report import evaluate_run_after_training

            # the DataLoader workers are gone: the report computes on the cores they had too
            configure_cpu_threads(accelerator.device, accelerator.num_processes, dataloader_num_workers=0)
            print(evaluate_run_after_training(output_dir, arguments.report_protocols,
                                              dataset_name=arguments.eval_dataset_name or arguments.dataset_name,
                                              seed=arguments.seed, baselines=arguments.report_baselines))
        # ----- model card (README.md, loss curve, figures): the folder is Hub-ready
        try:
            write_model_card(output_dir, repo_id=arguments.hub_model_id)
        except Exception as error:  # the weights are saved; a figure problem must not lose the run
            if is_disk_full(error):
                raise
            logger.warning("Model card not written (%s); `hf-ssl push` writes it before uploading", error)
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
