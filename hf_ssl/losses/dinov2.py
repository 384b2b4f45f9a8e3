"""The terms DINOv2 adds to DINO: Sinkhorn-Knopp teacher targets, the iBOT masked-patch loss and
the KoLeo regulariser.

Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision", arXiv:2304.07193;
the formulas follow facebookresearch/dinov2 dinov2/loss/ (dino_clstoken_loss.py, ibot_patch_loss.py,
koleo_loss.py), written as plain functions. A DINOv2 step, as in its train loop::

    targets = sinkhorn_knopp_targets(teacher_cls_logits, teacher_temperature)      # (2B, K), no gradient
    loss = dino cross-entropy(student_cls_logits, targets)                        # the DINO term
    patch_targets = sinkhorn_knopp_targets(teacher_masked_patch_logits, teacher_temperature)
    loss += masked_patch_loss(student_masked_patch_logits, patch_targets, masked_patch_weights(mask))
    loss += 0.1 * sum over global crops of koleo_loss(student_cls_tokens_of_that_crop)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_ssl.distributed import all_reduce_sum_with_grad, is_distributed


@torch.no_grad()
def sinkhorn_knopp_targets(teacher_logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets balanced over the prototypes by Sinkhorn-Knopp (SwAV; DINOv2's centering).

    With Q = exp(teacher_logits / temperature)^T, a (K, B) matrix over every process's rows
    (B of them in all), normalised to sum 1, each of `iterations` rounds divides every row
    (prototype) by K times its sum over all processes, then every column (sample) by B times its
    sum; the result, times B, is returned transposed: each sample's row sums to 1 and, after
    enough rounds, each prototype receives B / K of the mass. Computed in log space (the same
    numbers where the official exp does not overflow).

    Args:
        teacher_logits: (B_local, K) on this process (the CLS logits of the global crops, or the
            logits of the masked patches gathered into rows).
        temperature: the teacher temperature.
        iterations: Sinkhorn rounds (DINOv2: 3).

    Returns:
        (B_local, K) float32 targets, rows summing to 1; no gradient.
    """
    if teacher_logits.ndim != 2:
        raise ValueError(f"teacher_logits must be (B, K), got shape {tuple(teacher_logits.shape)}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    # In log space: the same iterations (the first normalisation cancels in the first row step),
    # but the official exp(logits / T) overflows float32 once a logit exceeds ~88 T.
    log_assignment = (teacher_logits.float() / temperature).T  # (K, B_local)
    prototypes = log_assignment.shape[0]
    samples = all_reduce_sum_with_grad(torch.tensor(float(log_assignment.shape[1]), device=log_assignment.device))
    for _ in range(iterations):
        log_assignment = log_assignment - _log_sum_exp_over_processes(log_assignment) - math.log(prototypes)
        log_assignment = log_assignment - torch.logsumexp(log_assignment, dim=0, keepdim=True) - samples.log()
    return (log_assignment + samples.log()).exp().T  # (B_local, K)


def _log_sum_exp_over_processes(values: torch.Tensor) -> torch.Tensor:
    """``(K, B_local) -> (K, 1)``: log sum_j exp(values_kj) over the columns of every process."""
    largest = values.amax(dim=1, keepdim=True)  # (K, 1)
    if is_distributed():
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
    return largest + all_reduce_sum_with_grad((values - largest).exp().sum(dim=1, keepdim=True)).log()


def masked_patch_weights(mask: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` bool -> ``(M,)``: 1 / (masked patches of its image) for each of the M masked patches,
    in ``mask[mask]`` order, so that every image weighs the same in `masked_patch_loss`."""
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, N) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    per_image = 1.0 / mask.sum(dim=-1).clamp(min=1).float()  # (B,)
    return per_image.unsqueeze(-1).expand_as(mask)[mask]  # (M,)


def masked_patch_loss(student_logits: torch.Tensor, teacher_targets: torch.Tensor, patch_weights: torch.Tensor,
                      num_images: int, student_temperature: float = 0.1) -> torch.Tensor:
    """iBOT's masked-patch self-distillation (DINOv2's ``iBOTPatchLoss.forward_masked``):

        loss = -(1 / num_images) * sum_m w_m * sum_k t_mk * log softmax(s_m / tau_s)_k

    over the M masked patches of this process, w_m from `masked_patch_weights` (each image's
    masked patches share weight 1): the mean over images of each image's mean cross-entropy.

    Args:
        student_logits: (M, K) the student's patch-head logits at the masked positions.
        teacher_targets: (M, K) the teacher's distributions at the same positions (no gradient).
        patch_weights: (M,).
        num_images: B, the images (global crops) the patches come from.
        student_temperature: tau_s (DINOv2: 0.1).
    """
    if student_logits.shape != teacher_targets.shape or patch_weights.shape != student_logits.shape[:1]:
        raise ValueError(f"student_logits and teacher_targets must be (M, K) and patch_weights (M,), got "
                         f"{tuple(student_logits.shape)}, {tuple(teacher_targets.shape)}, {tuple(patch_weights.shape)}")
    cross_entropy = -(teacher_targets * F.log_softmax(student_logits.float() / student_temperature, dim=-1)).sum(-1)
    return (cross_entropy * patch_weights).sum() / num_images


def koleo_loss(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The Kozachenko-Leonenko entropy estimator as a regulariser (Sablayrolles et al. 2019,
    "Spreading vectors for similarity search", arXiv:1806.03198), which spreads a batch's features:

        x_i = e_i / ||e_i||,   loss = -(1 / B) * sum_i log(||x_i - x_n(i) + eps|| + eps)

    where n(i) is x_i's nearest other row (found without gradient; the eps inside the norm is
    torch's ``PairwiseDistance``, as in the official code). Computed in float32 outside autocast,
    over this process's rows only, as DINOv2 does.

    Args:
        embeddings: (B, D), B >= 2 (DINOv2: the student's CLS tokens of one global crop).
    """
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings must be (B, D) with B >= 2, got shape {tuple(embeddings.shape)}")
    with torch.autocast(embeddings.device.type, enabled=False):
        normalised = F.normalize(embeddings.float(), p=2, dim=-1, eps=eps)  # (B, D)
        with torch.no_grad():
            similarity = normalised @ normalised.T  # (B, B)
            similarity.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
            nearest = similarity.argmax(dim=1)  # (B,)
        distances = (normalised - normalised[nearest] + eps).norm(dim=-1)  # (B,)
        return -torch.log(distances + eps).mean()
