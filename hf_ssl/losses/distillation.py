"""Distillation of a frozen teacher's features into a student, without labels.

Global term (after Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and
consistent", arXiv:2106.05237, whose KL between the teacher's and the student's class
distributions needs a classifier): the teacher's own embeddings of earlier images stand in for
the classifier's weights. With t, s the L2-normalised teacher and (projected) student embeddings
of one image and Q the queue of normalised teacher embeddings,

    p_t = softmax(Q t / tau),   p_s = softmax(Q s / tau),   loss = KL(p_t || p_s)

Dense term: each image's patch-to-patch similarity distributions, teacher against student
(the student's map resized to the teacher's grid first). With T, S the ``(N, D)`` L2-normalised
patch features of one image,

    P_t = softmax_rows(T T^T / tau),   P_s = softmax_rows(S S^T / tau),   loss = mean_rows KL(P_t || P_s)

which compares which patches resemble which, so teacher and student widths need not match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .embeddings import check_pair, check_positive, normalized, to_compute_dtype


def _kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)), ``(..., K)`` logits."""
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1).mean()


def queue_distillation_loss(
    student_embeddings: torch.Tensor,
    teacher_embeddings: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """KL(p_t || p_s) over the queue (module docstring), mean over the batch.

    Args:
        student_embeddings: ``(B, D)`` the student's embeddings projected to the teacher's width.
        teacher_embeddings: ``(B, D)`` the teacher's embeddings of the same views (no gradient).
        queue: ``(K, D)`` teacher embeddings of earlier images (normalised here; no gradient).
        temperature: tau > 0.

    Returns:
        Scalar.
    """
    check_pair(student_embeddings, teacher_embeddings, "student_embeddings", "teacher_embeddings")
    check_positive(temperature, "temperature")
    if queue.dim() != 2 or queue.shape[1] != teacher_embeddings.shape[1] or queue.shape[0] == 0:
        raise ValueError(f"queue must be (K, {teacher_embeddings.shape[1]}) with K > 0, got {tuple(queue.shape)}")
    prototypes = normalized(queue.detach())  # (K, D)
    teacher_logits = normalized(teacher_embeddings.detach()) @ prototypes.T / temperature  # (B, K)
    student_logits = normalized(student_embeddings) @ prototypes.T / temperature  # (B, K)
    return _kl_rows(teacher_logits, student_logits)


def patch_similarity_distillation_loss(
    student_patches: torch.Tensor,
    teacher_patches: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Mean over images and rows of KL(P_t || P_s) between patch-to-patch similarity
    distributions (module docstring).

    Args:
        student_patches: ``(B, N, D_s)`` the student's patch features on the teacher's grid.
        teacher_patches: ``(B, N, D_t)`` the teacher's patch features (no gradient).
        temperature: tau > 0.

    Returns:
        Scalar.
    """
    if student_patches.dim() != 3 or teacher_patches.dim() != 3 or student_patches.shape[:2] != teacher_patches.shape[:2]:
        raise ValueError(
            "student_patches and teacher_patches must be (B, N, D) with the same B and N; got "
            f"{tuple(student_patches.shape)} and {tuple(teacher_patches.shape)}"
        )
    check_positive(temperature, "temperature")
    teacher = normalized(teacher_patches.detach())  # (B, N, D_t)
    student = normalized(student_patches)  # (B, N, D_s)
    teacher_logits = teacher @ teacher.transpose(1, 2) / temperature  # (B, N, N)
    student_logits = student @ student.transpose(1, 2) / temperature  # (B, N, N)
    return _kl_rows(to_compute_dtype(teacher_logits), student_logits)


__all__ = ["patch_similarity_distillation_loss", "queue_distillation_loss"]
