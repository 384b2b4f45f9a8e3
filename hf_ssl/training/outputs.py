"""The Hub-ready run folder: model + image processor + run metadata + exported backbone(s) + remote code.

What `save_run_folder` writes is what a Hub repo needs, so that uploading the folder by any means
(``hf-ssl push``, ``huggingface-cli upload``) gives a repo that loads: the method's modeling code
and ``auto_map`` for ``trust_remote_code`` are written here, not only at push time. Optional
extras (the timm copy, the remote code) are skipped with a note when the model has none; they
never fail the run that made them.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel, ViTImageProcessor

from hf_ssl.backbones import is_timm_module
from hf_ssl.remote_code import add_remote_code

from .disk_space import disk_full_error, is_disk_full

logger = logging.getLogger(__name__)

BACKBONE_FOLDER = "backbone"
TIMM_BACKBONE_FOLDER = "backbone_timm"
TRAINING_ARGUMENTS_FILE = "training_args.json"


def read_training_arguments(run_dir: str | Path) -> dict:
    """What a run folder records of the run that made it (method, model, data, steps, hardware, ...);
    {} for a folder without a readable one (a backbone folder, a model from elsewhere)."""
    path = Path(run_dir) / TRAINING_ARGUMENTS_FILE
    try:
        arguments = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return arguments if isinstance(arguments, dict) else {}


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    threads = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {threads} thread{'' if threads == 1 else 's'})"


def _write_timm_copy(model: PreTrainedModel, folder: Path, image_processor: ViTImageProcessor) -> None:
    try:
        model.export_timm(folder, image_processor)
    except (ValueError, KeyError) as error:  # an encoder timm's classes cannot express (e.g. LayerNorm eps 1e-12)
        shutil.rmtree(folder, ignore_errors=True)
        logger.warning("%s/ not written, timm has no equivalent of this encoder (%s); %s/ holds it", folder.name, error,
                       BACKBONE_FOLDER)


def _write_remote_code(output_dir: Path) -> None:
    try:
        add_remote_code(output_dir)
    except ValueError as error:  # a model class outside hf_ssl.modeling (e.g. a method defined in a script)
        logger.warning("No trust_remote_code files written (%s): the folder loads where hf_ssl is imported", error)


def save_run_folder(
    model: PreTrainedModel,
    output_dir: str | Path,
    image_processor: ViTImageProcessor,
    training_arguments: dict,
) -> Path:
    """Write config.json + model.safetensors + preprocessor_config.json + training_args.json at
    `output_dir`, the method's modeling code with ``auto_map`` (`hf_ssl.remote_code.add_remote_code`), the
    encoder as a plain transformers checkpoint under ``backbone/`` and, where timm has an
    equivalent (ViTs, timm backbones), in timm's format under ``backbone_timm/``.

    Raises:
        DiskFullError: the disk filled; the message gives the space the folder needs and what to run.
    """
    output_dir = Path(output_dir)
    try:
        _write_run_folder(model, output_dir, image_processor, training_arguments)
    except (OSError, SafetensorError) as error:
        if not is_disk_full(error):
            raise
        weight_bytes = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
        raise disk_full_error(
            output_dir, "the run folder", 3 * weight_bytes,  # the model, the encoder alone and its timm copy
            "Training finished at its last checkpoint: free space, then run the same command with "
            "--resume_from_checkpoint latest to write the folder",
        ) from None
    return output_dir


def _write_run_folder(model: PreTrainedModel, output_dir: Path, image_processor: ViTImageProcessor,
                      training_arguments: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    _write_remote_code(output_dir)
    model.export_backbone(output_dir / BACKBONE_FOLDER, image_processor)
    if not (output_dir / BACKBONE_FOLDER / "config.json").is_file():
        raise RuntimeError(f"{type(model).__name__}.export_backbone wrote no config.json")
    if not is_timm_module(model.get_backbone()):  # a timm backbone's export already is timm's format
        _write_timm_copy(model, output_dir / TIMM_BACKBONE_FOLDER, image_processor)
    (output_dir / TRAINING_ARGUMENTS_FILE).write_text(json.dumps(training_arguments, indent=2, default=str) + "\n")
