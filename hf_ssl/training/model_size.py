"""Refuse a model too large for the machine before any of its weights is allocated.

A ``--model`` folder's config.json can describe any size: one with a 16384-wide, 12-layer ViT
asks for 39 billion parameters, and building it only stops when memory runs out (a traceback, or
the kernel's OOM killer with no message at all). `check_model_fits` counts the parameters of the
model built on the meta device (no memory) and compares the least that AdamW training holds per
parameter with the memory of the device the run trains on.
"""

from __future__ import annotations

import psutil
import torch
from accelerate import PartialState
from torch import nn

from .errors import ConfigurationError

# fp32 weight, gradient and AdamW's two moments: 4 bytes each, whatever the mixed precision (the
# masters stay fp32). Activations come on top; this is the floor, not an estimate.
TRAINING_BYTES_PER_PARAMETER = 16


def training_device() -> torch.device:
    """This process's device: the launch's (`PartialState`, when the CLI has set one up), else the
    first GPU or the CPU; no process state is created here."""
    if PartialState._shared_state:
        return PartialState().device
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of `device`: the GPU's own, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return psutil.virtual_memory().total


def _gigabytes(count: float) -> str:
    return f"{count / 1e9:,.1f} GB"


def check_model_fits(model: nn.Module, device: torch.device, shards: int = 1, name: str = "the model") -> None:
    """Raise `ConfigurationError` when `model`'s training state alone exceeds `device`'s memory.

    Args:
        model: the model as training builds it (on the meta device: nothing is allocated).
        device: the device each process trains on.
        shards: processes the weights and optimizer state are split across (FSDP), else 1.
        name: how the message names the model (``--model <folder>``).
    """
    parameters = sum(parameter.numel() for parameter in model.parameters())
    needed = parameters * TRAINING_BYTES_PER_PARAMETER / shards
    available = device_memory_bytes(device)
    if needed > available:
        per_process = f" per process (sharded over {shards})" if shards > 1 else ""
        raise ConfigurationError(
            f"{name} has {parameters / 1e9:,.1f} billion parameters: training it needs at least {_gigabytes(needed)}"
            f"{per_process} for weights, gradients and AdamW state ({TRAINING_BYTES_PER_PARAMETER} bytes each, before "
            f"activations), and {device.type} memory here is {_gigabytes(available)}; check its config.json"
        )
