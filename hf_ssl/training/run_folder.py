"""Protect a run folder: never silently reuse, mix or overwrite another run's files.

Like transformers' Trainer with ``output_dir``: a folder that already holds a run (its model,
checkpoints or training log) is refused unless the run is resumed (``--resume_from_checkpoint``)
or replaced (``--overwrite_output_dir``, which first removes the previous run's files). A resume
must keep the arguments that fix the model, the tokenizer fit and the data order: they are stored
in every checkpoint (``run_arguments.json``) and compared with the new ones. All of this runs
before any data is read, so a bad folder fails in seconds with one message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_ssl.recipes import available_methods, get_recipe

from .errors import ConfigurationError
from .optimizer import resolve_optimization
from .outputs import TRAINING_ARGUMENTS_FILE
from .checkpointing import (
    TRAINER_STATE_NAME,
    checkpoints_root,
    latest_checkpoint,
    list_checkpoints,
    read_run_arguments,
    verify_checkpoint,
)

logger = logging.getLogger(__name__)

# The arguments every per-step schedule is computed from, with their resolved values. A resume that
# changed one used to recompute the schedules silently: a finished 100-step run resumed with
# --max_steps 150 restarted its cosine at 34x its last learning rate without warm-up, and the card
# described a schedule that never ran; --max_steps below the checkpoint's step trained nothing and
# labelled the weights with the smaller count. Checkpoints written before they were recorded are
# not checked on them.
SCHEDULE_FIELDS = ("max_steps", "learning_rate", "weight_decay", "warmup_steps")
# Arguments whose change breaks a resumed run: the model and its tokenizer fit (method, model,
# overrides, image size, seed, fit batches), the data order and position (dataset, columns,
# workers, processes, shuffle blocks, batch geometry) and the per-sample augmentation seeds.
RESUME_INVARIANT_FIELDS: tuple[str, ...] = (
    "method",
    "model",
    "model_overrides",
    "image_size",
    "image_mean",
    "image_std",
    "seed",
    "total_batch_size",
    "gradient_accumulation_steps",
    "tokenizer_fit_batches",
    "dataset_name",
    "dataset_config_name",
    "data_files",
    "data_dir",
    "train_split",
    "image_column",
    "streaming",
    "shuffle_buffer_size",
    "dataloader_num_workers",
    "world_size",
    "from_scratch",
    "max_train_samples",
    "preparation_rows",
    "method_arguments",
    *SCHEDULE_FIELDS,
)
# Files and folders that only a run writes: finding one means the folder holds a run.
RUN_MARKERS = ("config.json", "model.safetensors", "training_log.jsonl", TRAINING_ARGUMENTS_FILE, "eval_results.json", "checkpoints")
# Everything a run writes at the top of its folder (removed by --overwrite_output_dir).
RUN_FOLDER_ENTRIES = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "preprocessor_config.json",
    TRAINING_ARGUMENTS_FILE, "training_log.jsonl", "training_log.jsonl.tmp", "eval_results.json", "README.md",
    "checkpoints", "logs", "backbone", "backbone_timm",
)
RUN_FOLDER_PATTERNS = ("model-*.safetensors", "*.png", "configuration_*.py", "modeling_*.py", "hf_ssl_*.py")
_NOT_RECORDED = object()


def _describe(path: Path) -> str:
    return f"{path.name}/" if path.is_dir() else path.name


def run_files(output_dir: str | Path) -> list[Path]:
    """The entries of `output_dir` that show it holds a run (empty for a new or unrelated folder)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for name in RUN_MARKERS:
        path = output_dir / name
        if (path.is_dir() and any(path.iterdir())) or path.is_file():
            found.append(path)
    return found


def _check_writable(output_dir: Path) -> None:
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigurationError(f"--output_dir {output_dir}: {existing} is a file, not a folder")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".hf-ssl-write-check-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise ConfigurationError(f"--output_dir {output_dir} is not writable ({error.strerror or error})") from None


def check_output_dir_usable(output_dir: str | Path) -> None:
    """Raise `ConfigurationError` when `output_dir` is a file or cannot be created or written."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigurationError(f"--output_dir {output_dir} is a file, not a folder")
    _check_writable(output_dir)


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_output_dir(output_dir: str | Path, overwrite: bool = False, resume: str | None = None) -> None:
    """Refuse an output folder that cannot be written or already holds a run that would be lost.

    Args:
        output_dir: the run folder.
        overwrite: ``--overwrite_output_dir``: a previous run there may be replaced.
        resume: ``--resume_from_checkpoint``: None, ``"latest"`` or a checkpoint folder.

    Raises:
        ConfigurationError: the folder is a file, not writable, or holds a run that neither
            `resume` continues nor `overwrite` allows to replace.
    """
    output_dir = Path(output_dir)
    check_output_dir_usable(output_dir)
    if overwrite and resume == "latest":
        raise ConfigurationError(
            "--overwrite_output_dir removes the previous run, --resume_from_checkpoint latest continues it: choose one"
        )
    if overwrite and resume is not None and _is_inside(Path(resume), output_dir):
        raise ConfigurationError(
            f"--overwrite_output_dir would delete --resume_from_checkpoint {resume}, which is inside --output_dir {output_dir}"
        )
    found = run_files(output_dir)
    if not found or overwrite:
        return
    listing = ", ".join(_describe(path) for path in found)
    if resume is None:
        raise ConfigurationError(
            f"--output_dir {output_dir} already holds a run ({listing}): pass --resume_from_checkpoint latest to "
            "continue it, --overwrite_output_dir to replace it, or choose another --output_dir"
        )
    if resume == "latest":
        if not list_checkpoints(output_dir) and any(path.name in ("config.json", "model.safetensors") for path in found):
            raise ConfigurationError(
                f"--output_dir {output_dir} holds a finished run without checkpoints ({listing}): nothing to resume; "
                "pass --overwrite_output_dir to replace it or choose another --output_dir"
            )
        return
    if not _is_inside(Path(resume), output_dir):
        raise ConfigurationError(
            f"--output_dir {output_dir} already holds a run ({listing}) and --resume_from_checkpoint {resume} belongs "
            "to another folder: resume into an empty --output_dir, or add --overwrite_output_dir to replace this one"
        )


def prepare_output_dir(output_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Create `output_dir`; with `overwrite`, first remove the files a previous run wrote there.

    Only the run-folder contract's entries are removed (model, configs, logs, checkpoints, card,
    figures, copied remote code); anything else in the folder is kept and reported.

    Returns:
        The removed paths.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        return []
    doomed = [output_dir / name for name in RUN_FOLDER_ENTRIES if (output_dir / name).exists()]
    for pattern in RUN_FOLDER_PATTERNS:
        doomed += [path for path in sorted(output_dir.glob(pattern)) if path.is_file() and path not in doomed]
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if doomed:
        logger.info("--overwrite_output_dir: removed the previous run's %s from %s", ", ".join(p.name for p in doomed), output_dir)
    kept = sorted(path.name for path in output_dir.iterdir())
    if kept:
        logger.info("--overwrite_output_dir: kept %s (not written by hf-ssl)", ", ".join(kept))
    return doomed


def resolve_resume_checkpoint(output_dir: str | Path, resume: str | None) -> Path | None:
    """The verified checkpoint to resume from, or None to start from scratch.

    ``"latest"`` is the newest intact checkpoint of `output_dir` (damaged newer ones are skipped
    with a warning naming the file); an explicit folder must itself be intact.

    Raises:
        DamagedCheckpointError: the chosen checkpoint (or, for ``"latest"``, every one) is damaged.
    """
    if resume is None:
        return None
    if resume == "latest":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            logger.info("No checkpoint in %s yet: starting from scratch", checkpoints_root(output_dir))
        return checkpoint
    verify_checkpoint(resume)
    return Path(resume)


def _normalised(value: Any) -> Any:
    """JSON form of an argument value; a JSON string (``--model_overrides``) compares as its object."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, (dict, list)) else value
    if isinstance(value, (tuple, list)):
        return [_normalised(item) for item in value]
    if isinstance(value, dict):
        return {key: _normalised(item) for key, item in value.items()}
    return value


def resume_arguments(
    arguments: Any, world_size: int, fields: Sequence[str] = RESUME_INVARIANT_FIELDS, method_arguments: Any = None
) -> dict:
    """The must-not-change arguments of a run, as stored in its checkpoints (``run_arguments.json``).

    Args:
        arguments: a dataclass (`PretrainingArguments`) or mapping; fields it lacks are left out.
        world_size: number of processes (stored as ``world_size``).
        method_arguments: the method's own flags (a dataclass), stored as ``method_arguments``.
    """
    values = dataclasses.asdict(arguments) if dataclasses.is_dataclass(arguments) else dict(arguments)
    values["world_size"] = world_size
    if dataclasses.is_dataclass(arguments) and values.get("method") in available_methods() and values.get("max_steps"):
        # the values the schedules are computed from, whether given as flags or the recipe's defaults
        values.update(resolve_optimization(arguments, get_recipe(values["method"]).optimizer))
    if method_arguments is not None:
        values["method_arguments"] = dataclasses.asdict(method_arguments)
    return {name: _normalised(values[name]) for name in fields if name in values}


def check_resume_arguments(saved: Mapping[str, Any], given: Mapping[str, Any], fields: Iterable[str] = RESUME_INVARIANT_FIELDS) -> None:
    """Raise if any of `fields` differs between a checkpoint's arguments and this run's.

    Raises:
        ConfigurationError: one line per differing field, ``--name: saved X, given Y``.
    """
    differences = []
    for name in fields:
        if name not in given:
            continue
        saved_value = _normalised(saved.get(name, _NOT_RECORDED))
        given_value = _normalised(given[name])
        if saved_value is _NOT_RECORDED and name in SCHEDULE_FIELDS:
            continue
        if saved_value is _NOT_RECORDED:
            differences.append(f"  --{name}: saved (not recorded), given {json.dumps(given_value)}")
        elif saved_value != given_value:
            differences.append(f"  --{name}: saved {json.dumps(saved_value)}, given {json.dumps(given_value)}")
    if any(difference.startswith(f"  --{name}:") for name in SCHEDULE_FIELDS for difference in differences):
        differences.append(
            "  (the learning-rate and weight-decay schedules span --max_steps and are fixed when a run starts; to train "
            "longer, start a new run from this one's encoder: --model <run folder>/backbone)"
        )
    if differences:
        raise ConfigurationError(
            f"cannot resume: {sum(line.startswith('  --') for line in differences)} argument(s) differ from the "
            "checkpoint's run and must not change (use the saved values, or start a new run with "
            "--overwrite_output_dir or another --output_dir):\n" + "\n".join(differences)
        )


def check_run_folder(arguments: Any, world_size: int, method_arguments: Any = None) -> Path | None:
    """Every run-folder check of `trainers/pretrain.py`, before any data is read.

    Checks `arguments.output_dir` (`check_output_dir`), picks the verified checkpoint to resume
    (`resolve_resume_checkpoint`) and compares its stored arguments with these
    (`check_resume_arguments`).

    Returns:
        The checkpoint to resume from, or None for a fresh start.
    """
    overwrite = bool(getattr(arguments, "overwrite_output_dir", False))
    resume = arguments.resume_from_checkpoint
    check_output_dir(arguments.output_dir, overwrite=overwrite, resume=resume)
    checkpoint = resolve_resume_checkpoint(arguments.output_dir, resume)
    step = json.loads((checkpoint / TRAINER_STATE_NAME).read_bytes()).get("step", 0) if checkpoint is not None else 0
    if step > arguments.max_steps:
        raise ConfigurationError(
            f"--resume_from_checkpoint: {checkpoint} is at step {step}, beyond --max_steps {arguments.max_steps}: "
            f"nothing would be trained, and the weights would be labelled {arguments.max_steps} steps"
        )
    if checkpoint is not None:
        saved = read_run_arguments(checkpoint)
        if saved is None:
            logger.warning("%s records no run arguments: cannot check that the resumed run uses the same ones", checkpoint)
        else:
            check_resume_arguments(saved, resume_arguments(arguments, world_size, method_arguments=method_arguments))
    return checkpoint
