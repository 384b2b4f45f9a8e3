"""The Hub-ready run folder: model + image processor + run metadata + exported backbone(s)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from transformers import PreTrainedModel, ViTImageProcessor

from hf_ssl.backbones import is_timm_module

BACKBONE_FOLDER = "backbone"
TIMM_BACKBONE_FOLDER = "backbone_timm"


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def save_run_folder(
    model: PreTrainedModel,
    output_dir: str | Path,
    image_processor: ViTImageProcessor,
    training_arguments: dict,
) -> Path:
    """Write config.json + model.safetensors + preprocessor_config.json + training_args.json at
    `output_dir`, the encoder as a plain transformers checkpoint under ``backbone/`` and, where timm
    has an equivalent (ViTs, timm backbones), in timm's format under ``backbone_timm/``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    model.export_backbone(output_dir / BACKBONE_FOLDER, image_processor)
    if not (output_dir / BACKBONE_FOLDER / "config.json").is_file():
        raise RuntimeError(f"{type(model).__name__}.export_backbone wrote no config.json")
    if not is_timm_module(model.get_backbone()):  # a timm backbone's export already is timm's format
        model.export_timm(output_dir / TIMM_BACKBONE_FOLDER, image_processor)
    (output_dir / "training_args.json").write_text(json.dumps(training_arguments, indent=2, default=str) + "\n")
    return output_dir

