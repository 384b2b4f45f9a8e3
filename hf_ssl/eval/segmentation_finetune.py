"""Segmentation fine-tuning: the encoder and a deconvolution decoder trained on per-pixel masks.

The SplitMask paper (El-Nouby et al. 2021, arXiv:2112.10740) segments by applying a few
deconvolution layers to the encoder's outputs; here the encoder's last feature map
(`spatial_features`: ViT patch tokens on their grid, conv and Swin last stages) goes through
the decoder of `hf_ssl.modeling.segmentation.BackboneForSemanticSegmentation` (the model ``hf-ssl
finetune --task segmentation`` exports): transposed 3x3 convolutions of stride 2 (BatchNorm,
GELU), each doubling the map, as many as bring it closest to the image size (at most 4), then a
1x1 classifier whose logits are resized bilinearly to the image. Training is the
classification fine-tuning's (`hf_ssl.eval.finetune.train_until_converged`: AdamW, warm-up,
cosine, layer-wise decay, early stopping on the validation fifth's mean IoU), with per-pixel
cross-entropy and the same geometric augmentation applied to the masks (nearest).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from hf_ssl.backbones.modules import spatial_features
from hf_ssl.modeling.segmentation import BackboneForSemanticSegmentation, decoder_layers

from .data import IGNORE_INDEX
from .features import _encoder_of
from .finetune import FinetuneSettings, augment_batch_with_masks, finetune_settings, train_until_converged, with_drop_path
from .low_label import stratified_validation_split
from .protocol import EvaluationProtocol, add_settings_arguments, register_protocol
from .segmentation import linear_segmentation, segmentation_metrics

if TYPE_CHECKING:
    from .candidates import Candidate
    from .data import LabelledData

@torch.no_grad()
def _predict_masks(model: nn.Module, pixel_values: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """``(N, H, W)`` predicted classes in eval mode."""
    was_training = model.training
    model.eval()
    predictions = torch.cat([model(batch.to(device)).logits.argmax(1).cpu() for batch in pixel_values.split(batch_size)])
    model.train(was_training)
    return predictions


def finetune_segmentation(backbone: nn.Module, train_pixel_values: torch.Tensor, train_masks: torch.Tensor,
                          train_labels: torch.Tensor, test_pixel_values: torch.Tensor, test_masks: torch.Tensor,
                          num_classes: int, settings: FinetuneSettings | None = None, seed: int = 0,
                          id2label: dict[int, str] | None = None, progress: bool = False,
                          stop_requested=None, per_class: bool = False,
                          **overrides) -> tuple[dict, BackboneForSemanticSegmentation]:
    """Fine-tune a copy of `backbone` with a deconvolution decoder until the validation mean IoU
    stops rising; report the test metrics of the best validation check.

    Args:
        backbone: any encoder `spatial_features` handles, or an hf-ssl pre-training model; its
            weights are copied.
        train_pixel_values: (N, C, H, W); train_masks: (N, H, W); train_labels: (N,) image labels
            (the validation split is stratified by them).
        test_pixel_values: (M, C, H, W); test_masks: (M, H, W).
        num_classes: K, background included.
        settings: `FinetuneSettings`; `overrides` replace single fields.
        id2label: class names the model's config keeps (default ``class_<k>``).
        progress, stop_requested: see `hf_ssl.eval.finetune.train_until_converged`.
        per_class: add the test split's ``"class_iou"`` (a list over the K classes, None for an absent one).

    Returns:
        ``({"mean_iou", "pixel_accuracy", "steps", "max_steps", "best_step", "validated",
        "validation_mean_iou" (when validated), "decoder_layers", "stopped_early"}, model)``.
    """
    settings = dataclasses.replace(settings or FinetuneSettings(), **overrides)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    split = stratified_validation_split(train_labels, seed=seed)
    fit_index, validation_index = split if split is not None else (torch.arange(len(train_labels)), None)
    encoder = with_drop_path(_encoder_of(backbone), settings.drop_path_rate)
    device = next(encoder.parameters()).device
    with torch.no_grad():
        grid_side = spatial_features(encoder.eval(), train_pixel_values[:1].to(device)).shape[2]
    layers = decoder_layers(grid_side, train_pixel_values.shape[-1])
    model = BackboneForSemanticSegmentation.from_backbone(encoder, num_classes, layers, id2label=id2label,
                                                          image_size=int(train_pixel_values.shape[-1]))
    batch_size = settings.batch_size * 4

    def batch_loss(batch_index: torch.Tensor) -> torch.Tensor:
        pixels, masks = augment_batch_with_masks(train_pixel_values[batch_index].to(device),
                                                 train_masks[batch_index].to(device), settings.augmentation, generator,
                                                 IGNORE_INDEX)
        return F.cross_entropy(model(pixels).logits, masks, ignore_index=IGNORE_INDEX, label_smoothing=settings.label_smoothing)

    def validation_mean_iou() -> float:
        predictions = _predict_masks(model, train_pixel_values[validation_index], batch_size, device)
        return segmentation_metrics(predictions, train_masks[validation_index], num_classes)["mean_iou"]

    run = train_until_converged(model, settings, fit_index, batch_loss,
                                validation_mean_iou if validation_index is not None else None, generator,
                                progress=progress, stop_requested=stop_requested)
    metrics = segmentation_metrics(_predict_masks(model, test_pixel_values, batch_size, device), test_masks, num_classes,
                                   per_class=per_class)
    return {**metrics, "steps": run["steps"], "max_steps": run["max_steps"], "best_step": run["best_step"],
            "validated": split is not None, **({"validation_mean_iou": run["best_score"]} if split else {}),
            "decoder_layers": layers, "stopped_early": run["stopped_early"]}, model


class SegmentationFinetuneProtocol(EvaluationProtocol):
    name = "segmentation_finetune"
    title = "Segmentation fine-tuning"
    description = ("the whole encoder and a deconvolution decoder trained on per-pixel masks, early-stopped on a "
                   "validation split's mean IoU; from random init it is the supervised segmentation model")
    settings_class = FinetuneSettings
    trains_encoder = True
    metric = "mean_iou"
    task_type = "image-segmentation"

    def add_arguments(self, parser) -> None:
        """``--segmentation_finetune_<field>`` flags; the short aliases (``--layer_decay``) stay fine-tuning's."""
        add_settings_arguments(parser, self.name, self.settings_class, aliases=False)

    def settings(self, **values) -> FinetuneSettings:
        return finetune_settings(None, **values)

    def evaluate(self, candidate: Candidate, data: LabelledData, subset: torch.Tensor, settings: FinetuneSettings,
                 seed: int) -> dict:
        """Raw pixels have no encoder to tune: their counterpart is the linear layer alone on each
        cell's pixels (`segmentation_linear`'s raw-pixel baseline)."""
        data.require_masks(self.name)
        if candidate.encoder is None:
            train, test = candidate.feature_maps(data)
            return linear_segmentation(train[subset], data.train_masks[subset], data.train_labels[subset], test,
                                       data.test_masks, data.num_mask_classes, seed=seed)
        if candidate.name == "random_init":
            settings = settings.for_random_init()
        metrics, _ = finetune_segmentation(candidate.encoder, data.train_pixels[subset], data.train_masks[subset],
                                           data.train_labels[subset], data.test_pixels, data.test_masks,
                                           data.num_mask_classes, settings=settings, seed=seed)
        return metrics


SEGMENTATION_FINETUNE = register_protocol(SegmentationFinetuneProtocol())
