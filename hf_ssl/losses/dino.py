"""DINO's self-distillation loss, centre update and teacher-temperature schedule.

DINO, Caron et al. 2021, arXiv:2104.14294; transcribes facebookresearch/dino main_dino.py
``DINOLoss``, split into three plain functions so that the centre can live in a model buffer
(saved by ``save_pretrained``) and the temperature in a per-step schedule the loop applies.

A training step, as in the official code::

    teacher_output = teacher(global_crops)             # (2 * B, K), chunk c = global crop c
    student_output = student(global_crops + local_crops)  # (num_crops * B, K), same chunking
    loss = dino_loss(student_output, teacher_output, center, teacher_temperature=schedule[step])
    center.copy_(update_dino_center(center, teacher_output))  # after the loss, as the official code
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_ssl.distributed import all_reduce_sum_with_grad

from .embeddings import to_compute_dtype


def dino_loss(
    student_output: torch.Tensor,
    teacher_output: torch.Tensor,
    center: torch.Tensor,
    teacher_temperature: float = 0.04,
    student_temperature: float = 0.1,
    num_global_crops: int = 2,
) -> torch.Tensor:
    """Cross-entropy between the centred, sharpened teacher and the student over crop pairs.

    With crops laid out in chunks of B rows (chunk c = crop c of every image, the global crops
    first, exactly like the official multi-crop wrapper's concatenated outputs):

        P_t(g) = softmax((teacher_g - center) / tau_t)   (no gradient)
        P_s(v) = softmax(student_v / tau_s)
        loss   = mean over pairs (g, v), g < num_global_crops, v != g, of
                 mean_b sum_k -P_t(g)_bk log P_s(v)_bk

    i.e. 2 * (num_crops - 1) pairs with two global crops. The loss is a mean over this
    process's rows only; there is no batch-level term (the centre is the only cross-process
    quantity, see `update_dino_center`).

    Args:
        student_output: ``(num_crops * B, K)`` student head outputs, all crops.
        teacher_output: ``(num_global_crops * B, K)`` teacher head outputs, global crops only.
        center: ``(K,)`` or ``(1, K)`` running centre of the teacher outputs.
        teacher_temperature: tau_t > 0 (paper: 0.04, warmed up to 0.07; see
            `teacher_temperature_schedule`).
        student_temperature: tau_s > 0 (paper: 0.1).
        num_global_crops: crops seen by the teacher (paper: 2).

    Returns:
        Scalar.
    """
    if student_output.dim() != 2 or teacher_output.dim() != 2 or student_output.shape[1] != teacher_output.shape[1]:
        raise ValueError(
            "student_output and teacher_output must be (rows, K) with the same K; "
            f"got {tuple(student_output.shape)} and {tuple(teacher_output.shape)}"
        )
    if num_global_crops < 1 or teacher_output.shape[0] % num_global_crops:
        raise ValueError(
            f"num_global_crops must be >= 1 and divide teacher_output's {teacher_output.shape[0]} rows, "
            f"got {num_global_crops}"
        )
    batch = teacher_output.shape[0] // num_global_crops
    if batch == 0 or student_output.shape[0] % batch or student_output.shape[0] // batch <= num_global_crops:
        raise ValueError(
            f"student_output must hold more than num_global_crops={num_global_crops} chunks of B={batch} rows, "
            f"got {student_output.shape[0]} rows"
        )
    if center.numel() != teacher_output.shape[1]:
        raise ValueError(f"center must have K={teacher_output.shape[1]} values, got shape {tuple(center.shape)}")
    for name, value in (("teacher_temperature", teacher_temperature), ("student_temperature", student_temperature)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")

    teacher_probabilities = centred_teacher_targets(teacher_output, center, teacher_temperature)
    return crop_pair_cross_entropy(student_output, teacher_probabilities, num_global_crops, student_temperature)


def centred_teacher_targets(teacher_output: torch.Tensor, center: torch.Tensor, teacher_temperature: float) -> torch.Tensor:
    """DINO's centring and sharpening, ``P_t = softmax((teacher_output - center) / tau_t)``, no gradient.

    Args:
        teacher_output: ``(rows, K)``; center: ``(K,)`` or ``(1, K)``.

    Returns:
        ``(rows, K)`` distributions in the compute dtype.
    """
    centred = to_compute_dtype(teacher_output.detach()) - center.reshape(1, -1)
    return F.softmax(centred / teacher_temperature, dim=-1)


def crop_pair_cross_entropy(
    student_output: torch.Tensor,
    teacher_targets: torch.Tensor,
    num_global_crops: int = 2,
    student_temperature: float = 0.1,
) -> torch.Tensor:
    """The pair average of `dino_loss` given the teacher's distributions (however they were centred):

        loss = mean over pairs (g, v), v != g, of mean_b sum_k -T(g)_bk log softmax(student_v / tau_s)_bk

    Args:
        student_output: ``(num_crops * B, K)`` crop-major, the global crops first.
        teacher_targets: ``(num_global_crops * B, K)`` rows summing to 1 (no gradient).
        num_global_crops: crops the teacher saw.
        student_temperature: tau_s.

    Returns:
        Scalar.
    """
    batch = teacher_targets.shape[0] // num_global_crops
    if batch == 0 or student_output.shape[0] % batch or student_output.shape[0] // batch < num_global_crops:
        raise ValueError(f"student_output must hold at least num_global_crops={num_global_crops} chunks of B={batch} "
                         f"rows, got {student_output.shape[0]} rows")
    teacher_crops = teacher_targets.detach().chunk(num_global_crops)
    student_log_probabilities = F.log_softmax(to_compute_dtype(student_output) / student_temperature, dim=-1)
    student_crops = student_log_probabilities.chunk(student_output.shape[0] // batch)
    pair_losses = [
        -(teacher_crop * student_crop).sum(dim=-1).mean()
        for teacher_index, teacher_crop in enumerate(teacher_crops)
        for student_index, student_crop in enumerate(student_crops)
        if student_index != teacher_index  # the same view seen by both networks is skipped
    ]
    if not pair_losses:
        raise ValueError("no crop pair: give more than one crop per image")
    return torch.stack(pair_losses).mean()


@torch.no_grad()
def update_dino_center(center: torch.Tensor, teacher_output: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """The next DINO centre: an EMA of the mean teacher output over the global batch.

        new_center = momentum * center + (1 - momentum) * mean_rows(teacher_output over all processes)

    The batch mean is all-reduced (sum of rows and row count), so processes may hold different
    row counts and all of them get the same centre. Call it after `dino_loss`: the loss of a
    step uses the centre from before the step, as in the official ``DINOLoss.forward``.

    Args:
        center: ``(K,)`` or ``(1, K)`` current centre.
        teacher_output: ``(rows, K)`` teacher head outputs of this step (all global crops).
        momentum: m in [0, 1] (paper: 0.9).

    Returns:
        New centre with the shape and dtype of `center` (no gradient).
    """
    if teacher_output.dim() != 2 or center.numel() != teacher_output.shape[1]:
        raise ValueError(
            f"center (K,) and teacher_output (rows, K) disagree: {tuple(center.shape)} vs {tuple(teacher_output.shape)}"
        )
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    outputs = to_compute_dtype(teacher_output)
    row_sum = all_reduce_sum_with_grad(outputs.sum(dim=0))  # (K,)
    local_rows = torch.tensor(float(outputs.shape[0]), dtype=outputs.dtype, device=outputs.device)
    row_count = all_reduce_sum_with_grad(local_rows)
    batch_center = (row_sum / row_count).reshape(center.shape)
    return (center * momentum + batch_center * (1 - momentum)).to(center.dtype)


def teacher_temperature_schedule(
    num_epochs: int,
    steps_per_epoch: int,
    warmup_temperature: float = 0.04,
    final_temperature: float = 0.07,
    warmup_epochs: int = 30,
) -> torch.Tensor:
    """Per-step teacher temperature: linear warm-up over epochs, then constant.

    The official ``DINOLoss`` indexes ``concat(linspace(warmup, final, warmup_epochs),
    final * ones(num_epochs - warmup_epochs))`` by EPOCH; every step of epoch e here gets that
    epoch's value, so ``schedule[epoch * steps_per_epoch + i]`` reproduces it. The paper warms
    0.04 -> 0.07 over the first 30 epochs; the official script's flags default to a constant
    0.04 (``--teacher_temp 0.04 --warmup_teacher_temp_epochs 0``), reached here with
    ``final_temperature=0.04, warmup_epochs=0``. Values above 0.07 are reported unstable.

    Args:
        num_epochs: length of training in epochs, >= 1.
        steps_per_epoch: optimizer steps per epoch, >= 1.
        warmup_temperature: temperature of epoch 0.
        final_temperature: temperature from epoch ``warmup_epochs - 1`` on.
        warmup_epochs: epochs of the linear ramp, 0 <= warmup_epochs <= num_epochs.

    Returns:
        ``(num_epochs * steps_per_epoch,)`` float64.
    """
    if num_epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"num_epochs and steps_per_epoch must be >= 1, got {num_epochs} and {steps_per_epoch}")
    if not 0 <= warmup_epochs <= num_epochs:
        raise ValueError(f"warmup_epochs must be in [0, num_epochs={num_epochs}], got {warmup_epochs}")
    for name, value in (("warmup_temperature", warmup_temperature), ("final_temperature", final_temperature)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    per_epoch = torch.cat(
        [
            torch.linspace(warmup_temperature, final_temperature, warmup_epochs, dtype=torch.float64),
            torch.full((num_epochs - warmup_epochs,), final_temperature, dtype=torch.float64),
        ]
    )
    return per_epoch.repeat_interleave(steps_per_epoch)
