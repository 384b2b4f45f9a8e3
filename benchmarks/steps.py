"""One training step of any implementation, with the levers that change how it runs (not what it computes).

An implementation (hf-ssl, transformers, lightly) contributes a `ModelStep`: the module holding
every parameter, ``loss(runner, batch)``, and its own hooks (EMA updates, gradient cancelling).
`build_training_step` adds what every implementation of a group shares: AdamW, gradient clipping
at the method's norm, bf16 autocast, the device and the levers, and returns the callable that the
harness times: forward + backward + clipping + optimizer step (+ hooks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from hf_ssl.training.activation_recomputation import use_activation_checkpointing
from hf_ssl.training.attention import resolve_attention, use_attention
from hf_ssl.training.optimizer import can_fuse

OptimizerKind = Literal["fused", "foreach", "for-loop"]
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
SDPA_BACKENDS = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}
# Backends each device has: CPU's default already is its flash kernel, so only "math" differs.
DEVICE_SDPA_BACKENDS = {"cpu": ("math",), "cuda": ("flash", "efficient", "cudnn", "math")}


class NotApplicable(ValueError):
    """The case or lever cannot run at this size (e.g. a masking method on a CNN)."""


@dataclass(frozen=True)
class Levers:
    """How a step runs. The baseline (every field at its default) is what the hf-ssl loop does today.

    Args:
        optimizer: AdamW implementation: ``"fused"`` (the baseline: what the hf-ssl trainer builds,
            and transformers' Trainer default ``adamw_torch_fused``; torch's own choice where the
            fused kernel does not apply), ``"foreach"`` or ``"for-loop"`` (one parameter at a
            time: torch's default on CPU).
        compile: ``torch.compile`` the model (its forward; backward through AOTAutograd).
        sdpa_backend: ``"default"`` or one of `SDPA_BACKENDS`, forced with ``sdpa_kernel``.
        channels_last: model and 4-D inputs in channels-last memory format (conv backbones).
        item_per_step: read the loss with ``.item()`` after every step (a host sync on CUDA), as
            loops that log every step do; the hf-ssl loop does not.
        attention: the hf-ssl model's attention kernel: ``"auto"`` (the baseline: the trainer's
            ``--attention auto``, lean on CPU under bf16, else SDPA), ``"sdpa"``, ``"eager"`` or
            ``"lean"``. References keep their own default (SDPA).
        activation_checkpointing: recompute each block's activations in the backward pass (the
            trainer's ``--gradient_checkpointing``): a memory lever.
    """

    optimizer: OptimizerKind = "fused"
    compile: bool = False
    sdpa_backend: str = "default"
    channels_last: bool = False
    item_per_step: bool = False
    attention: str = "auto"
    activation_checkpointing: bool = False

    def label(self) -> str:
        """``"baseline"`` or what differs from it, e.g. ``"fused AdamW"``, ``"SDPA math"``."""
        parts = []
        if self.optimizer != "fused":
            parts.append(f"{self.optimizer} AdamW")
        if self.compile:
            parts.append("torch.compile")
        if self.sdpa_backend != "default":
            parts.append(f"SDPA {self.sdpa_backend}")
        if self.channels_last:
            parts.append("channels-last")
        if self.item_per_step:
            parts.append(".item() per step")
        if self.attention != "auto":
            parts.append(f"{self.attention} attention")
        if self.activation_checkpointing:
            parts.append("activation checkpointing")
        return " + ".join(parts) or "baseline"

    def as_dict(self) -> dict:
        return {"optimizer": self.optimizer, "compile": self.compile, "sdpa_backend": self.sdpa_backend,
                "channels_last": self.channels_last, "item_per_step": self.item_per_step, "attention": self.attention,
                "activation_checkpointing": self.activation_checkpointing}


BASELINE = Levers()


def _trainer_attention(choice: str, device: torch.device, precision: Precision) -> str:
    """What the trainer's ``--attention choice`` resolves to for a step of `precision` (bf16 = autocast)."""
    return resolve_attention(choice, device, "bf16" if precision == "bf16" else "no")


def lever_variants(names: list[str], device: torch.device, sdpa_backends: list[str] | None, compile_model: bool,
                   has_attention: bool, is_convolutional: bool, precision: Precision = "fp32") -> list[Levers]:
    """The one-lever-on variants to measure next to the baseline for one model.

    Args:
        names: lever names from ``--levers`` (``foreach``, ``for_loop``, ``sdpa``, ``channels_last``, ``item``,
            ``attention``: each kernel the trainer's ``--attention auto`` does not pick for `precision`;
            lean only under bf16, where it differs from eager; ``checkpointing``: activation checkpointing).
        sdpa_backends: backends for the ``sdpa`` lever (default: the device's, `DEVICE_SDPA_BACKENDS`).
        compile_model: add the ``torch.compile`` variant (``--compile``).
        has_attention: the model attends with SDPA (ViT, Swin): the ``sdpa`` lever applies.
        is_convolutional: a conv backbone: the ``channels_last`` lever applies.
    """
    variants = []
    if "foreach" in names:
        variants.append(replace(BASELINE, optimizer="foreach"))
    if "for_loop" in names:
        variants.append(replace(BASELINE, optimizer="for-loop"))
    if "sdpa" in names and has_attention:
        for backend in sdpa_backends or DEVICE_SDPA_BACKENDS.get(device.type, ()):
            variants.append(replace(BASELINE, sdpa_backend=backend))
    if "channels_last" in names and is_convolutional:
        variants.append(replace(BASELINE, channels_last=True))
    if "item" in names:
        variants.append(replace(BASELINE, item_per_step=True))
    if "attention" in names and has_attention:
        trainer_choice = _trainer_attention("auto", device, precision)
        kernels = ("sdpa", "eager", "lean") if precision == "bf16" else ("sdpa", "eager")
        variants += [replace(BASELINE, attention=kernel) for kernel in kernels if kernel != trainer_choice]
    if "checkpointing" in names:
        variants.append(replace(BASELINE, activation_checkpointing=True))
    if compile_model:
        variants.append(replace(BASELINE, compile=True))
    return variants


LEVER_NAMES = ("foreach", "for_loop", "sdpa", "channels_last", "item", "attention", "checkpointing")


@dataclass
class ModelStep:
    """What one implementation contributes to a training step.

    Args:
        module: holds every parameter (trained ones and EMA copies) and buffer of the implementation.
        loss: ``(runner, batch) -> scalar loss``; `runner` is `module` or its compiled version,
            `batch` the case's inputs on the device (``{"pixel_values": (B, ...), ...}``).
        parameter_groups: AdamW groups over `module`'s trained parameters.
        after_backward: called after backward and clipping, before the optimizer step.
        after_optimizer_step: called after the optimizer step (e.g. an EMA update).
        note: how this implementation was set up, for the results file.
        follows_trainer_attention: the hf-ssl model: its attention kernel is chosen as the trainer
            chooses it (`Levers.attention`); references keep their own.
    """

    module: nn.Module
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    parameter_groups: list[dict]
    after_backward: Callable[[], None] | None = None
    after_optimizer_step: Callable[[], None] | None = None
    note: str = ""
    follows_trainer_attention: bool = False


def optimizer_options(kind: OptimizerKind, parameter_groups: list[dict]) -> dict:
    """`torch.optim.AdamW` keyword arguments for `kind`: fused only where the kernel applies
    (`hf_ssl.training.optimizer.can_fuse`, the trainer's rule), else torch's own choice."""
    if kind == "fused":
        return {"fused": True} if can_fuse(parameter_groups) else {}
    return {"foreach": kind == "foreach"}


def optimizer_implementation(optimizer: torch.optim.Optimizer, device: torch.device) -> str:
    """What torch runs for a built AdamW (unset, its default: the per-parameter loop on CPU, foreach on CUDA)."""
    if optimizer.defaults.get("fused"):
        return "fused"
    foreach = optimizer.defaults.get("foreach")
    if foreach is None:
        foreach = device.type == "cuda"
    return "foreach" if foreach else "for-loop"


def _sdpa_context(backend: str):
    if backend == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[backend])])


def _on_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    """The batch where the step reads it: pinned host memory on CUDA (copied in the step, as a
    loader's batch is), the tensors themselves on CPU."""
    prepared = {}
    for key, value in batch.items():
        if channels_last and value.is_floating_point() and value.dim() == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        prepared[key] = value.pin_memory() if device.type == "cuda" else value
    return prepared


@dataclass
class TrainingStep:
    """A ready-to-time step and what the results file says about it."""

    run: Callable[[], torch.Tensor]
    model_step: ModelStep
    optimizer: torch.optim.Optimizer
    batch: dict[str, torch.Tensor]
    parameters: list[torch.Tensor]
    attention: str | None = None


def build_training_step(
    model_step: ModelStep,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    precision: Precision,
    levers: Levers,
    learning_rate: float,
    betas: tuple[float, float],
    gradient_clip_norm: float | None,
) -> TrainingStep:
    """forward (under bf16 autocast for ``precision="bf16"``) + backward + clipping + AdamW + hooks.

    Args:
        batch: host tensors ``{name: (B, ...)}``; on CUDA they are pinned and copied to the device
            inside every step (``non_blocking``), as the training loop does with a loader's batches.
        gradient_clip_norm: global gradient-norm clipping (None: none), the method's setting.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    module = model_step.module.to(device)
    attention = None
    if model_step.follows_trainer_attention:
        attention = _trainer_attention(levers.attention, device, precision)
        if attention != "sdpa":
            use_attention(module, attention)
    if levers.activation_checkpointing and not use_activation_checkpointing(module):
        raise NotApplicable("no transformers blocks or timm model to recompute")
    if levers.channels_last:
        module.to(memory_format=torch.channels_last)
    runner = torch.compile(module) if levers.compile else module
    host_batch = _on_device(batch, device, levers.channels_last)
    optimizer = torch.optim.AdamW(model_step.parameter_groups, lr=learning_rate, betas=betas,
                                  **optimizer_options(levers.optimizer, model_step.parameter_groups))
    parameters = [parameter for group in model_step.parameter_groups for parameter in group["params"]]
    use_bf16 = precision == "bf16"

    def run() -> torch.Tensor:
        inputs = {key: value.to(device, non_blocking=True) for key, value in host_batch.items()}
        with _sdpa_context(levers.sdpa_backend):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model_step.loss(runner, inputs)
            loss.backward()
        if gradient_clip_norm:
            torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_norm)
        if model_step.after_backward is not None:
            model_step.after_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if model_step.after_optimizer_step is not None:
            model_step.after_optimizer_step()
        if levers.item_per_step:
            loss.item()
        return loss

    return TrainingStep(run=run, model_step=model_step, optimizer=optimizer, batch=host_batch, parameters=parameters,
                        attention=attention)


def resident_tensors(step: TrainingStep, device: torch.device) -> list[torch.Tensor]:
    """What a step keeps on `device` between calls: parameters, buffers, optimizer state, the batch."""
    tensors = list(step.model_step.module.parameters()) + list(step.model_step.module.buffers())
    for state in step.optimizer.state.values():
        tensors += [value for value in state.values() if torch.is_tensor(value)]
    tensors += list(step.batch.values())
    return [tensor for tensor in tensors if tensor.device.type == device.type]


__all__ = [
    "BASELINE",
    "DEVICE_SDPA_BACKENDS",
    "LEVER_NAMES",
    "PRECISIONS",
    "SDPA_BACKENDS",
    "Levers",
    "ModelStep",
    "TrainingStep",
    "build_training_step",
    "lever_variants",
    "optimizer_implementation",
    "optimizer_options",
    "resident_tensors",
]
