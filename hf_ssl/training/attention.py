"""Which attention kernel a training run uses: torch's SDPA, or explicit matmuls where those are faster.

On CPU under bf16 autocast, torch 2.14's SDPA kernels are the slow choice at ViT sequence lengths:
its flash kernel for CPU ran a ViT-S attention (batch 8, 6 heads, 197 tokens) forward + backward in
23 ms, and with a trainable bias (BEiT's relative positions, which the flash kernel cannot
differentiate) SDPA falls back to its math path, which upcasts to fp32 (23 ms); the explicit
``softmax(q k^T * scale + bias) v`` with bf16 matmuls and an fp32 softmax ran in 11 ms
(SplitMask's 99-token halves: 15-23 ms against 7 ms). That is transformers' "eager" attention, and
the mixed-precision arithmetic of the methods' official code (BEiT, MAE, DINO under autocast).
In fp32, and on GPUs, SDPA is as fast or faster and stays.

"lean" is eager's arithmetic with half its activation memory under bf16: eager keeps both the fp32
softmax output (for the softmax backward) and its bf16 copy (for the value product), so a ViT-S
attention at batch 8 keeps 14.1 MiB for the backward; lean keeps the bf16 probabilities alone
(7.0 MiB) and computes the softmax backward from them. Its forward is eager's bit for bit; its
query and key gradients differ from eager's by bf16 rounding (0.35 % of their norm, measured),
the rounding the bf16 score gradient gets anyway before its matmuls. Same speed as eager (11-15
against 12-14 ms forward + backward, AMD EPYC 2 cores), so ``auto`` picks it where it picked eager.

Only the running model changes: `_attn_implementation` is not saved with a config, so a saved or
exported model loads with transformers' default (SDPA).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

AttentionChoice = Literal["auto", "sdpa", "eager", "lean"]
ATTENTION_CHOICES: tuple[str, ...] = get_args(AttentionChoice)
# The name under which transformers' attention and mask interfaces know the lean kernel.
LEAN_IMPLEMENTATION = "hf_ssl_lean"


def resolve_attention(choice: AttentionChoice, device: torch.device, mixed_precision: str) -> str:
    """``"lean"``, ``"eager"`` or ``"sdpa"``: `choice` itself, or for ``"auto"`` lean on CPU under bf16, else SDPA.

    Args:
        mixed_precision: accelerate's resolved setting (``"no"``, ``"bf16"``, ``"fp16"``).
    """
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    return "lean" if device.type == "cpu" and mixed_precision == "bf16" else "sdpa"


class _LeanAttention(torch.autograd.Function):
    """``softmax(q k^T * scaling + bias) v`` keeping q, k, v and the probabilities in q's dtype for the backward."""

    @staticmethod
    def forward(ctx, query, key, value, bias, scaling):
        scores = torch.matmul(query, key.transpose(-2, -1)) * scaling  # eager's operations, in its order
        if bias is not None:
            scores = scores + bias
        probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        ctx.save_for_backward(query, key, value, probabilities)
        ctx.scaling = scaling
        ctx.bias_shape, ctx.bias_dtype = (bias.shape, bias.dtype) if bias is not None else (None, None)
        ctx.mark_non_differentiable(probabilities)
        return torch.matmul(probabilities, value), probabilities

    @staticmethod
    def backward(ctx, grad_output, _grad_probabilities_output):
        query, key, value, probabilities = ctx.saved_tensors
        grad_value = torch.matmul(probabilities.transpose(-2, -1), grad_output)
        grad_probabilities = torch.matmul(grad_output, value.transpose(-2, -1)).float()
        kept = probabilities.float()
        # softmax backward: dS = P * (dP - sum_j dP_j P_j), in fp32
        grad_scores = kept * (grad_probabilities - (grad_probabilities * kept).sum(dim=-1, keepdim=True))
        grad_bias = None
        if ctx.needs_input_grad[3]:
            grad_bias = grad_scores.sum_to_size(ctx.bias_shape).to(ctx.bias_dtype)
        grad_scores = grad_scores.to(query.dtype)
        grad_query = torch.matmul(grad_scores, key) * ctx.scaling
        grad_key = torch.matmul(grad_scores.transpose(-2, -1), query) * ctx.scaling
        return grad_query, grad_key, grad_value, grad_bias, None


def lean_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' attention-function signature, for ``config._attn_implementation = LEAN_IMPLEMENTATION``.

    Args:
        query, key, value: ``(B, heads, N_q or N_k, head_dim)``.
        attention_mask: an additive ``(B or 1, heads or 1, N_q, N_k)`` float bias (relative positions,
            padding as eager's mask builder writes it), trainable or not; or None.

    Returns:
        ``(B, N_q, heads, head_dim)`` outputs and the ``(B, heads, N_q, N_k)`` probabilities, as eager's.
        With attention dropout in training (no hf-ssl recipe uses any) this is eager itself.
    """
    if dropout and module.training:
        from transformers.models.vit.modeling_vit import eager_attention_forward

        return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    output, probabilities = _LeanAttention.apply(query, key, value, attention_mask, scaling)
    return output.transpose(1, 2).contiguous(), probabilities


def register_lean_attention() -> None:
    """Make `LEAN_IMPLEMENTATION` a name transformers' modules dispatch to (masks built as eager's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(LEAN_IMPLEMENTATION, lean_attention_forward)
    # unregistered, transformers' mask builders would return no mask at all (padding ignored)
    AttentionMaskInterface.register(LEAN_IMPLEMENTATION, eager_mask)


def use_attention(model: nn.Module, kernel: Literal["eager", "lean"]) -> int:
    """Switch every SDPA attention of `model` to `kernel`; returns the number of configs and timm blocks changed.

    Covers transformers modules (each reads ``self.config._attn_implementation`` when it runs) and
    timm's attention blocks (their ``fused_attn`` flag: timm's own explicit matmuls for either kernel).
    Only SDPA is switched: a config that is eager already (some composite models are eager at the
    top because they cannot dispatch SDPA, and building one with "sdpa" fails) or names another
    kernel (flash_attention_2) is left alone. There is no way back to SDPA:
    ``--attention sdpa`` keeps the model as it was built.
    """
    if kernel not in ("eager", "lean"):
        raise ValueError(f"kernel must be 'eager' or 'lean', got {kernel!r}")
    implementation = "eager" if kernel == "eager" else LEAN_IMPLEMENTATION
    if kernel == "lean":
        register_lean_attention()
    changed, seen = 0, set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen and hasattr(config, "_attn_implementation"):
            seen.add(id(config))
            if config._attn_implementation == "sdpa":
                config._attn_implementation = implementation
                changed += 1
        if getattr(module, "fused_attn", None) is True:
            module.fused_attn = False
            changed += 1
    return changed


__all__ = ["ATTENTION_CHOICES", "LEAN_IMPLEMENTATION", "AttentionChoice", "lean_attention_forward", "register_lean_attention",
           "resolve_attention", "use_attention"]
