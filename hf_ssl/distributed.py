"""Process-group helpers that are harmless when running as a single process.

Models and losses call these instead of `torch.distributed` directly so that the same code runs
under `python`, `accelerate launch` and `torchrun` without branches at the call site.

Gradient convention of the autograd-aware collectives (`gather_with_grad`,
`all_reduce_sum_with_grad`): their backward pass SUMS, over processes, the gradients that every
process's loss sends to a tensor. Combined with DDP's averaging of parameter gradients over the
W processes, the update then equals the gradient of the mean of the per-process losses: the
single-process gradient on the global batch when each process computes either the same global
loss (Barlow Twins, VICReg, CLIP over the gathered batch) or the mean over its own rows of a
loss whose negatives are gathered (InfoNCE, NT-Xent, SigLIP). Every process must call the same
collectives in the same order, forward and backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def largest_over_processes(value: int, device: torch.device | str = "cpu") -> int:
    """The largest of one integer per process, on every process (all must call it); `value` itself
    when not distributed. `device` is where the collective runs (the process's GPU under NCCL)."""
    if not is_distributed():
        return int(value)
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when not distributed."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenation over processes; backward sends each process the summed gradient of its slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.local_rows = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        # Every process used every slice: the gradient of a slice is the sum over processes.
        summed = grad_output.contiguous().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_rows
        return summed[start : start + ctx.local_rows]


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum over processes; backward sums the gradients of every process's copy of the result."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        reduced = tensor.contiguous().clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        summed = grad_output.contiguous().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph.

    The backward pass sends each process the gradient of its own slice (summed over the
    processes that used it), which is what a loss over globally gathered negatives needs.

    Args:
        tensor: ``(B, ...)`` with the same shape on every process.

    Returns:
        ``(world_size * B, ...)``, rank r's rows at ``[r * B, (r + 1) * B)``; the input itself when
        not distributed.
    """
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over processes, keeping the autograd graph (see the module's gradient convention).

    Used for batch statistics that must cover the global batch (Barlow Twins' normalisation and
    cross-correlation, the DINO centre). Shapes may be anything, but equal on every process.

    Args:
        tensor: any shape; this process's partial sum.

    Returns:
        Same shape: the sum over processes; the input itself when not distributed.
    """
    if not is_distributed():
        return tensor
    return _AllReduceSumWithGrad.apply(tensor)
