"""Activation checkpointing: each block's activations recomputed in the backward pass instead of kept.

A memory lever, not a speed one: a block's forward runs twice per step (about a third more compute
for a ViT), and what the backward keeps shrinks to each block's input. transformers' blocks
(`GradientCheckpointingLayer`: ViT, BEiT, Swin, DINOv2 ... and the decoders hf-ssl builds from them)
and timm models (`set_grad_checkpointing`) are switched; torch's non-reentrant checkpoint keeps the
random state, so drop-path draws the same paths when a block is recomputed.
"""

from __future__ import annotations

import functools

from torch import nn


def use_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every transformers block and timm model of `model` in the backward pass; returns how many were switched.

    Only the running model changes: the flag is not part of a saved config.
    """
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    recompute = functools.partial(checkpoint, use_reentrant=False)
    switched, inside_timm = 0, set()
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.gradient_checkpointing = True
            module._gradient_checkpointing_func = recompute
            switched += 1
        elif callable(getattr(module, "set_grad_checkpointing", None)) and id(module) not in inside_timm:
            module.set_grad_checkpointing(True)  # timm: the model checkpoints its own blocks
            inside_timm.update(id(child) for child in module.modules())
            switched += 1
    return switched


__all__ = ["use_activation_checkpointing"]
