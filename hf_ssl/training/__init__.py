"""Training machinery for `trainers/pretrain.py`: arguments, schedules, optimizer, checkpoints, loop."""

from .arguments import (
    ConfigurationError,
    PretrainingArguments,
    parse_arguments,
    resolve_arguments,
    validate_arguments,
)
from .checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from .loop import LoopSettings, TrainingState, train
from .optimizer import build_optimizer, parameter_groups, scaled_learning_rate
from .schedules import cosine_schedule_with_warmup, set_learning_rate

__all__ = [
    "ConfigurationError",
    "LoopSettings",
    "PretrainingArguments",
    "TrainingState",
    "build_optimizer",
    "cosine_schedule_with_warmup",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "parameter_groups",
    "parse_arguments",
    "prune_checkpoints",
    "resolve_arguments",
    "save_checkpoint",
    "scaled_learning_rate",
    "set_learning_rate",
    "train",
    "validate_arguments",
]
