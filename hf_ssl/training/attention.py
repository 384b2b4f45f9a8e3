"""Which attention kernel a training run uses: torch's SDPA, or explicit matmuls where those are faster.

On CPU under bf16 autocast, torch 2.14's SDPA kernels are the slow choice at ViT sequence lengths:
its flash kernel for CPU ran a ViT-S attention (batch 8, 6 heads, 197 tokens) forward + backward in
23 ms, and with a trainable bias (BEiT's relative positions, which the flash kernel cannot
differentiate) SDPA falls back to its math path, which upcasts to fp32 (23 ms); the explicit
``softmax(q k^T * scale + bias) v`` with bf16 matmuls and an fp32 softmax ran in 11 ms
(SplitMask's 99-token halves: 15-23 ms against 7 ms). That is transformers' "eager" attention, and
the mixed-precision arithmetic of the methods' official code (BEiT, MAE, DINO under autocast).
In fp32, and on GPUs, SDPA is as fast or faster and stays.

Only the running model changes: `_attn_implementation` is not saved with a config, so a saved or
exported model loads with transformers' default (SDPA).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

AttentionChoice = Literal["auto", "sdpa", "eager"]
ATTENTION_CHOICES: tuple[str, ...] = get_args(AttentionChoice)


def resolve_attention(choice: AttentionChoice, device: torch.device, mixed_precision: str) -> str:
    """``"eager"`` or ``"sdpa"``: `choice` itself, or for ``"auto"`` eager on CPU under bf16, else SDPA.

    Args:
        mixed_precision: accelerate's resolved setting (``"no"``, ``"bf16"``, ``"fp16"``).
    """
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    return "eager" if device.type == "cpu" and mixed_precision == "bf16" else "sdpa"


def use_eager_attention(model: nn.Module) -> int:
    """Switch every SDPA attention of `model` to eager; returns the number of configs and timm blocks changed.

    Covers transformers modules (each reads ``self.config._attn_implementation`` when it runs) and
    timm's attention blocks (their ``fused_attn`` flag). Only SDPA is switched: a config that is
    eager already (some composite models are eager at the top because they cannot dispatch SDPA,
    and building one with "sdpa" fails) or names another kernel (flash_attention_2) is left alone.
    There is no way back to SDPA: ``--attention sdpa`` keeps the model as it was built.
    """
    changed, seen = 0, set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen and hasattr(config, "_attn_implementation"):
            seen.add(id(config))
            if config._attn_implementation == "sdpa":
                config._attn_implementation = "eager"
                changed += 1
        if getattr(module, "fused_attn", None) is True:
            module.fused_attn = False
            changed += 1
    return changed


__all__ = ["ATTENTION_CHOICES", "AttentionChoice", "resolve_attention", "use_eager_attention"]
