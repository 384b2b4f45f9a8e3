"""The Hub-ready run folder: model + image processor + run metadata + exported backbone."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, ViTImageProcessor
from transformers.image_utils import PILImageResampling


def image_processor_for_run(image_size: int, image_mean: Sequence[float], image_std: Sequence[float]) -> ViTImageProcessor:
    """A `ViTImageProcessor` that reproduces the run's evaluation preprocessing (size, mean, std)."""
    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
    )


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
    `output_dir`, and the encoder as a plain HF checkpoint (+ image processor) under ``backbone/``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    backbone_directory = Path(model.export_backbone(output_dir / "backbone"))
    image_processor.save_pretrained(backbone_directory)
    (output_dir / "training_args.json").write_text(json.dumps(training_arguments, indent=2, default=str) + "\n")
    return output_dir

