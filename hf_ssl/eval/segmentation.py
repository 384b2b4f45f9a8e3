"""Linear segmentation on frozen feature maps (DINOv2's linear evaluation), scored by mean IoU.

Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision", arXiv:2304.07193,
evaluate segmentation with a linear layer on frozen patch tokens whose low-resolution logit map is
upsampled to the label's resolution (facebookresearch/dinov2, ``BNHead`` in
dinov2/eval/segmentation/models/decode_heads/linear_head.py: a batch norm, then a 1x1 classifier).
Here the feature map is any backbone's last map (`spatial_features`: ViT patch tokens on their
grid, conv and Swin last stages), standardised with the training mean / std (the batch norm's
role), and the classifier minimises

    mean over labelled pixels p of CE(U(F W^T + b)_p, y_p) + (weight_decay / 2) ||W||^2

where U is bilinear upsampling to the image size. U is linear, so the problem is convex and
full-batch L-BFGS solves it to convergence: the only setting that matters is the weight decay,
chosen from `WEIGHT_DECAY_GRID` by mean IoU on a stratified validation fifth of the labelled
training images (never the test split), then refitted on all of them. Pixels marked
`IGNORE_INDEX` (255, the ADE20K / Pascal VOC convention) count in neither loss nor score.

The raw-pixel baseline is the same linear layer on the raw pixels of each `RAW_PIXEL_PATCH`-px
cell (a per-pixel linear probe on the local patch), so that a learned map must beat what the
pixels around a point already say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX
from .low_label import stratified_validation_split
from .protocol import EvaluationProtocol, register_protocol

if TYPE_CHECKING:
    from .candidates import Candidate
    from .data import LabelledData

RAW_PIXEL_PATCH = 4
WEIGHT_DECAY_GRID = (1e-6, 1e-5, 1e-4, 1e-3)
# Upsampled logits held at once (pixels x classes): bounds memory on large images and datasets.
_CHUNK_LOGITS = 1 << 24


def local_patch_pixels(pixel_values: torch.Tensor, patch_size: int = RAW_PIXEL_PATCH) -> torch.Tensor:
    """``(N, C, H, W) -> (N, H // p, W // p, C * p * p)``: each p x p cell's pixels as its feature."""
    cells = F.unfold(pixel_values.float(), kernel_size=patch_size, stride=patch_size)  # (N, C p p, h w)
    height, width = pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size
    return cells.transpose(1, 2).reshape(len(pixel_values), height, width, -1)


def standardise_maps(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every ``(N, h, w, D)`` map minus the training mean over images and positions, over the
    training std (constant channels keep std 1)."""
    flat = train.reshape(-1, train.shape[-1]).float()
    mean, std = flat.mean(0), flat.std(0, unbiased=False)  # (D,)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple((maps.float() - mean) / std for maps in (train, *others))


def _logits(maps: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(n, h, w, D) -> (n, K, H, W)``: the linear layer, then bilinear upsampling to `size`."""
    low = (maps @ weight.T + bias).permute(0, 3, 1, 2)  # (n, K, h, w)
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False)


def _chunks(maps: torch.Tensor, masks: torch.Tensor, num_classes: int):
    images = max(1, _CHUNK_LOGITS // (num_classes * masks.shape[-2] * masks.shape[-1]))
    return zip(maps.split(images), masks.split(images))


def fit_linear_segmentation(maps: torch.Tensor, masks: torch.Tensor, num_classes: int, weight_decay: float,
                            initial: tuple[torch.Tensor, torch.Tensor] | None = None,
                            max_iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise the module docstring's objective by full-batch L-BFGS.

    Args:
        maps: (N, h, w, D) standardised feature maps; masks: (N, H, W) class indices in
            [0, num_classes) or `IGNORE_INDEX`.
        weight_decay: >= 0.
        initial: ``(weight (K, D), bias (K,))`` to start from (a warm start along the grid).

    Returns:
        ``(weight (num_classes, D), bias (num_classes,))``.
    """
    labelled = int((masks != IGNORE_INDEX).sum())
    if labelled == 0:
        raise ValueError("the masks have no labelled pixel (all are IGNORE_INDEX)")
    weight = torch.zeros(num_classes, maps.shape[-1]) if initial is None else initial[0].clone()
    bias = torch.zeros(num_classes) if initial is None else initial[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")
    size = tuple(masks.shape[-2:])

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        total = 0.5 * weight_decay * weight.square().sum()
        total.backward()
        total = total.detach()
        for chunk_maps, chunk_masks in _chunks(maps, masks, num_classes):  # gradients accumulate over chunks
            loss = F.cross_entropy(_logits(chunk_maps, weight, bias, size), chunk_masks, ignore_index=IGNORE_INDEX,
                                   reduction="sum") / labelled
            loss.backward()
            total = total + loss.detach()
        return total

    optimizer.step(objective)
    return weight.detach(), bias.detach()


@torch.no_grad()
def predict_segmentation(maps: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w, D) -> (N, H, W)`` predicted class indices at image size `size`."""
    per_chunk = max(1, _CHUNK_LOGITS // (weight.shape[0] * size[0] * size[1]))
    return torch.cat([_logits(chunk, weight, bias, size).argmax(1) for chunk in maps.split(per_chunk)])


def confusion_matrix(predictions: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` pixel counts, rows the true class, columns the predicted one; `IGNORE_INDEX` pixels skipped."""
    keep = masks != IGNORE_INDEX
    pairs = masks[keep].long() * num_classes + predictions[keep].long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(predictions: torch.Tensor, masks: torch.Tensor, num_classes: int,
                         per_class: bool = False) -> dict:
    """Mean IoU and pixel accuracy of predicted class maps against masks, both (N, H, W).

    IoU of class c = TP / (TP + FP + FN), counted over every pixel of the split; the mean runs over
    the classes present in the masks or the predictions (an absent, never-predicted class has no
    IoU, as in mmsegmentation's nan-mean). Pixel accuracy = correct / labelled pixels. With
    `per_class`, ``"class_iou"`` lists each class's IoU (None for an absent class).
    """
    confusion = confusion_matrix(predictions, masks, num_classes).double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    metrics = {"mean_iou": float((true_positive[present] / union[present]).mean()),
               "pixel_accuracy": float(true_positive.sum() / confusion.sum())}
    if per_class:
        metrics["class_iou"] = [float(tp / total) if total > 0 else None for tp, total in zip(true_positive, union)]
    return metrics


def _mean_iou(weight, bias, maps, masks, num_classes) -> float:
    return segmentation_metrics(predict_segmentation(maps, weight, bias, tuple(masks.shape[-2:])), masks,
                                num_classes)["mean_iou"]


def linear_segmentation(train_maps: torch.Tensor, train_masks: torch.Tensor, train_labels: torch.Tensor,
                        test_maps: torch.Tensor, test_masks: torch.Tensor, num_classes: int,
                        grid: tuple[float, ...] = WEIGHT_DECAY_GRID, seed: int = 0) -> dict:
    """Validated linear segmentation of frozen feature maps.

    Args:
        train_maps: (N, h, w, D); train_masks: (N, H, W); train_labels: (N,) image labels (the
            validation split is stratified by them; all zeros for data without image labels).
        test_maps: (M, h, w, D); test_masks: (M, H, W).
        num_classes: K, background included.
        grid: candidate weight decays; seed: seed of the validation split.

    Returns:
        ``{"mean_iou", "pixel_accuracy", "weight_decay" (the one used), "validated" (bool),
        "validation_mean_iou" (when validated), "feature_grid" ([h, w])}``.
    """
    if not grid:
        raise ValueError("grid must hold at least one weight decay")
    split = stratified_validation_split(train_labels, seed=seed)
    scores, chosen = {}, None
    if split is not None:
        fit_index, validation_index = split
        fit, validation = standardise_maps(train_maps[fit_index], train_maps[validation_index])
        solution = None
        for weight_decay in sorted(grid, reverse=True):  # strongest first: each fit warm-starts the next
            solution = fit_linear_segmentation(fit, train_masks[fit_index], num_classes, weight_decay, solution)
            scores[weight_decay] = _mean_iou(*solution, validation, train_masks[validation_index], num_classes)
        best = max(scores.values())
        chosen = max(decay for decay, score in scores.items() if score == best)  # the strongest among ties
    weight_decay = chosen if chosen is not None else max(grid)
    train, test = standardise_maps(train_maps, test_maps)
    solution = fit_linear_segmentation(train, train_masks, num_classes, weight_decay)
    metrics = segmentation_metrics(predict_segmentation(test, *solution, tuple(test_masks.shape[-2:])), test_masks,
                                   num_classes)
    return {**metrics, "weight_decay": weight_decay, "validated": chosen is not None,
            **({"validation_mean_iou": scores[chosen]} if chosen is not None else {}),
            "feature_grid": list(train_maps.shape[1:3])}


@dataclass(frozen=True)
class LinearSegmentationSettings:
    """The candidate weight decays the validation split chooses from."""

    grid: tuple[float, ...] = field(default=WEIGHT_DECAY_GRID, metadata={"help": "candidate weight decays"})


class LinearSegmentationProtocol(EvaluationProtocol):
    name = "segmentation_linear"
    title = "Linear segmentation"
    description = ("a linear layer on frozen feature maps, upsampled to pixels (DINOv2's linear evaluation), "
                   "weight decay chosen on a validation split; mean IoU")
    settings_class = LinearSegmentationSettings
    metric = "mean_iou"
    task_type = "image-segmentation"

    def evaluate(self, candidate: Candidate, data: LabelledData, subset: torch.Tensor,
                 settings: LinearSegmentationSettings, seed: int) -> dict:
        data.require_masks(self.name)
        train, test = candidate.feature_maps(data)
        return linear_segmentation(train[subset], data.train_masks[subset], data.train_labels[subset], test,
                                   data.test_masks, data.num_mask_classes, grid=settings.grid, seed=seed)

    def details(self, settings: LinearSegmentationSettings) -> dict:
        return {"grid": list(settings.grid)}


LINEAR_SEGMENTATION = register_protocol(LinearSegmentationProtocol())
