"""Fully sharded runs (FSDP2 through accelerate): the launch check, and whole states out of shards.

A launch with an accelerate FSDP config (``recipes/accelerate/fsdp.yaml``) makes accelerate wrap
the model with torch's ``fully_shard``, one unit per class in the model's `_no_split_modules` (the
backbone's blocks), then the model itself. Each process then holds 1/N of every weight, gradient
and optimizer moment. hf-ssl's checkpoints and Hub folders hold whole tensors, so the functions
here gather them (collective calls: every process must make them) and scatter them back on resume;
the files are the same as a single-process run's.

accelerate 1.15 turns ``ACCELERATE_USE_FSDP`` into FSDP only on accelerators (its `state.py` sets
`DistributedType.FSDP` inside the GPU / NPU / XPU branch), while torch's ``fully_shard`` also runs
on CPU with gloo; `use_fsdp_on_cpu` switches a multi-process CPU launch that asked for FSDP to it,
so that the same launch line works, and is tested, on CPU.
"""

from __future__ import annotations

import os
import warnings

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, convert_outputs_to_fp32
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .errors import ConfigurationError


def launch_flag(variable: str) -> bool:
    """A boolean that `accelerate launch` exports from its config (``ACCELERATE_USE_FSDP``, ...)."""
    return os.environ.get(variable, "false").strip().lower() in ("1", "true", "yes")


def fsdp_requested() -> bool:
    """Whether `accelerate launch` was given an FSDP config."""
    return launch_flag("ACCELERATE_USE_FSDP")


def check_fsdp_launch() -> None:
    """Refuse FSDP version 1 before any work: hf-ssl gathers and scatters FSDP2's DTensor shards."""
    if fsdp_requested() and os.environ.get("FSDP_VERSION", "1").strip() != "2":
        raise ConfigurationError(
            "FSDP runs need fsdp_version: 2 in the accelerate config (FSDP1 is not supported); "
            "see recipes/accelerate/fsdp.yaml"
        )


def use_fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Make a multi-process CPU launch that asked for FSDP an FSDP2 run (see the module docstring).

    The plugin is read from the same ``FSDP_*`` variables accelerate reads on a GPU. Call right
    after creating the `Accelerator`, before `prepare`.
    """
    if not fsdp_requested() or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # AcceleratorState and PartialState share their attributes across instances (Borg pattern).
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def ignore_view_output_warning() -> None:
    """FSDP2 warns, on every process, that the model returned a view tensor (an in-place op on it
    would skip the all-gather). The trainer only reads the outputs (the loss, logged scalars), and a
    sharded run's losses and weights match the same DDP run's (tested), so the warning only alarms."""
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)


def is_fully_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def check_shardable(model: nn.Module) -> None:
    """torch's ``fully_shard`` refuses 0-d parameters (it shards dim 0), e.g. the dual encoder's
    logit scale, whose scalar shape transformers' `VisionTextDualEncoderModel` format fixes."""
    scalars = [name for name, parameter in model.named_parameters() if parameter.dim() == 0]
    if scalars:
        raise ConfigurationError(
            f"FSDP cannot shard this model: its parameters {', '.join(scalars)} are 0-d (fully_shard splits dim 0); "
            "train it data-parallel instead (recipes/accelerate/ddp_multi_gpu.yaml)"
        )


def use_autocast_under_fsdp(accelerator: Accelerator, model: nn.Module) -> None:
    """Under FSDP with bf16 / fp16, compute what the same DDP run computes: autocast, fp32 masters.

    accelerate's FSDP2 mixed precision is the sharding policy alone: parameters gathered, gradients
    reduced and outputs returned in the low precision, with no autocast. Every op then runs in
    bf16, the losses (SplitMask's 8192-way cross-entropy and InfoNCE, logged as 14.125, 13.84375 ...)
    included, and a BatchNorm gets a bf16 weight beside its fp32 running statistics, which torch's
    ``batch_norm`` refuses ("expected scalar type BFloat16 but found Float"; FSDP1 exempted batch
    norms; SimCLR's, MoCo v3's, BYOL's, SimSiam's, Barlow Twins' and VICReg's heads have them).

    Here the forward runs under autocast with fp32 outputs, as accelerate runs it under DDP;
    gradients are reduced in fp32; parameters are still gathered in the low precision (half the
    traffic; autocast would round them for its matmuls anyway), except in models with batch norms,
    which are gathered in fp32. Block inputs are not cast, so the residual stream stays fp32, as
    under autocast. Call on fully sharded runs, after building the model, before `prepare`.
    """
    if accelerator.mixed_precision == "no":
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float16
    has_batch_norm = any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())
    accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(
        param_dtype=None if has_batch_norm else dtype, reduce_dtype=torch.float32, cast_forward_inputs=False
    )
    # An instance attribute: fully_shard's hooks (gather, reshard) stay outside the autocast region.
    model.forward = convert_outputs_to_fp32(torch.autocast(accelerator.device.type, dtype=dtype)(model.forward))


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole weights and buffers of a sharded model, on the CPU of the main process ({} elsewhere).
    Collective."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Whole optimizer state keyed by parameter name (``{"state": {name: {...}}, "param_groups": [...]}``),
    on the main process ({} elsewhere). Collective."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Scatter whole weights (every process passes the same `state`) into a sharded model; strict."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Scatter a `full_optimizer_state` (every process passes the same one) into a sharded optimizer.

    Raises:
        ValueError: the saved parameter groups do not name this optimizer's parameters.
    """
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    expected = [[names[id(parameter)] for parameter in group["params"]] for group in optimizer.param_groups]
    saved = [list(group["params"]) for group in state["param_groups"]]
    if saved != expected:
        raise ValueError(f"its parameter groups name other parameters ({sum(map(len, saved))} saved, "
                         f"{sum(map(len, expected))} here)")
    # Not strict: a parameter that never had a gradient has no moments yet (DINO's last layer is
    # frozen for its first epoch), exactly as torch's own Optimizer.load_state_dict allows.
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))


def shard_summary(model: nn.Module) -> str:
    """How much of the model this process holds: "this process holds 12.74 of 25.43 M parameters"."""
    local = sum(parameter.to_local().numel() if hasattr(parameter, "to_local") else parameter.numel()
                for parameter in model.parameters())
    whole = sum(parameter.numel() for parameter in model.parameters())  # a DTensor's numel is the whole tensor's
    return f"this process holds {local / 1e6:.2f} of {whole / 1e6:.2f} M parameters"


def unsharded_class(model: nn.Module) -> type[nn.Module]:
    """The model's own class: ``fully_shard`` swaps it for a generated ``FSDP<Name>`` subclass."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if issubclass(cls, nn.Module) and not issubclass(cls, FSDPModule))


def whole_model(accelerator: Accelerator, model: nn.Module) -> nn.Module | None:
    """The trained model with whole tensors, for saving, exporting and evaluating on the main process.

    Without sharding, the unwrapped model itself on every process. Under FSDP (collective) a plain
    copy rebuilt from its config on the main process, None on the others.
    """
    unwrapped = accelerator.unwrap_model(model)
    if not is_fully_sharded(accelerator):
        return unwrapped
    state = full_model_state(unwrapped)
    if not accelerator.is_main_process:
        return None
    copy = unsharded_class(unwrapped)(unwrapped.config)
    copy.load_state_dict(state, strict=True)
    return copy.train(unwrapped.training)


__all__ = [
    "check_fsdp_launch",
    "check_shardable",
    "fsdp_requested",
    "ignore_view_output_warning",
    "full_model_state",
    "full_optimizer_state",
    "is_fully_sharded",
    "launch_flag",
    "load_full_model_state",
    "load_full_optimizer_state",
    "shard_summary",
    "unsharded_class",
    "use_autocast_under_fsdp",
    "use_fsdp_on_cpu",
    "whole_model",
]
