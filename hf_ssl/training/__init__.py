"""Training machinery for ``hf-ssl pretrain``: arguments, optimizer, checkpoints, loop."""

from .arguments import (
    PretrainingArguments,
    build_context,
    parse_arguments,
    resolve_arguments,
    validate_arguments,
)
from .errors import ConfigurationError
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
from .optimizer import build_optimizer
from .run_folder import (
    check_output_dir,
    check_resume_arguments,
    check_run_folder,
    prepare_output_dir,
    resolve_resume_checkpoint,
    resume_arguments,
)

__all__ = [
    "ConfigurationError",
    "DamagedCheckpointError",
    "LoopSettings",
    "PretrainingArguments",
    "TrainingState",
    "build_context",
    "build_optimizer",
    "check_output_dir",
    "check_resume_arguments",
    "check_run_folder",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "parse_arguments",
    "prepare_output_dir",
    "prune_checkpoints",
    "resolve_arguments",
    "resolve_resume_checkpoint",
    "resume_arguments",
    "save_checkpoint",
    "train",
    "validate_arguments",
    "verify_checkpoint",
]
