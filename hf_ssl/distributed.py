"""Process-group helpers that are harmless when running as a single process.

Models and losses call these instead of `torch.distributed` directly so that the same code runs
under `python`, `accelerate launch` and `torchrun` without branches at the call site.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when not distributed."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph.

    The backward pass sends each process the gradient of its own slice (summed over the
    processes that used it), which is what a loss over globally gathered negatives needs.

    Args:
        tensor: ``(B, ...)`` with the same shape on every process.

    Returns:
        ``(world_size * B, ...)``; the input itself when not distributed.
    """
    if not is_distributed():
        return tensor
    # torch.distributed.nn's all_gather is the autograd-aware collective.
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` over processes (no gradient); returns the input when not distributed."""
    if not is_distributed():
        return tensor
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / dist.get_world_size()
