"""Training machinery for `trainers/pretrain.py`: arguments, schedules, optimizer, checkpoints, loop."""

from .arguments import (
    ConfigurationError,
    PretrainingArguments,
    parse_arguments,
    resolve_arguments,
    validate_arguments,
)
from .checkpointing import (
    DamagedCheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from .loop import LoopSettings, TrainingState, train
from .optimizer import build_optimizer, parameter_groups, scaled_learning_rate
from .run_folder import (
    check_output_dir,
    check_resume_arguments,
    check_run_folder,
    prepare_output_dir,
    resolve_resume_checkpoint,
    resume_arguments,
)
from .schedules import cosine_schedule_with_warmup, set_learning_rate

__all__ = [
    "ConfigurationError",
    "DamagedCheckpointError",
    "LoopSettings",
    "PretrainingArguments",
    "TrainingState",
    "build_optimizer",
    "check_output_dir",
    "check_resume_arguments",
    "check_run_folder",
    "cosine_schedule_with_warmup",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "parameter_groups",
    "parse_arguments",
    "prepare_output_dir",
    "prune_checkpoints",
    "resolve_arguments",
    "resolve_resume_checkpoint",
    "resume_arguments",
    "save_checkpoint",
    "scaled_learning_rate",
    "set_learning_rate",
    "train",
    "validate_arguments",
    "verify_checkpoint",
]
