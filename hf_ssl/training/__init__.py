"""Training machinery for ``hf-ssl pretrain``: arguments, optimizer, checkpoints, loop."""

from .arguments import (
    ConfigurationError,
    PretrainingArguments,
    build_context,
    parse_arguments,
    resolve_arguments,
    validate_arguments,
)
from .checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from .loop import LoopSettings, TrainingState, train
from .optimizer import build_optimizer

__all__ = [
    "ConfigurationError",
    "LoopSettings",
    "PretrainingArguments",
    "TrainingState",
    "build_context",
    "build_optimizer",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "parse_arguments",
    "prune_checkpoints",
    "resolve_arguments",
    "save_checkpoint",
    "train",
    "validate_arguments",
]
