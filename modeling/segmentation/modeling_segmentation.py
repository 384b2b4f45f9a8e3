"""`BackboneForSemanticSegmentation`: any backbone's last feature map -> deconvolution decoder ->
per-pixel class logits at the image's size.

The backbone is rebuilt from its nested config (a transformers encoder or a timm model, offline);
its last feature map comes from `hf_ssl.backbones.spatial_features` (ViT patch tokens on their
grid, conv and Swin last stages). The decoder follows `SegmentationConfig`'s docstring. Logits are
resized bilinearly to the input, so ``pipeline("image-segmentation")`` (the image processor's
``post_process_semantic_segmentation``) returns one mask per class present.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SemanticSegmenterOutput

from hf_ssl.backbones.modules import build_backbone, feature_dimension, nested_backbone_config, spatial_features
from hf_ssl.safe_loading import SafeLoadingMixin

from .configuration_segmentation import MAX_DECODER_LAYERS, SegmentationConfig

# Weights a plain encoder may hold that the rebuilt backbone has not: the pooler (no segmentation
# output passes through it) and a masked-image-modeling mask token.
_UNUSED_ENCODER_WEIGHTS = ("pooler.", "embeddings.mask_token")


def decoder_layers(grid_side: int, image_side: int) -> int:
    """Stride-2 upsamplings that bring a ``grid_side`` map closest to ``image_side`` (0 to `MAX_DECODER_LAYERS`)."""
    return max(0, min(MAX_DECODER_LAYERS, round(math.log2(max(image_side / max(grid_side, 1), 1.0)))))


class BackboneForSemanticSegmentation(SafeLoadingMixin, PreTrainedModel):
    """Backbone + deconvolution decoder + 1x1 classifier.

    Attributes:
        backbone: the plain encoder (transformers or timm), rebuilt from ``config.backbone_config``.
        decoder: ``decoder_layers`` x (ConvTranspose2d 3x3 stride 2, BatchNorm2d, GELU).
        classifier: 1x1 convolution to ``num_labels`` logits.
    """

    config_class = SegmentationConfig
    base_model_prefix = "segmentation"
    main_input_name = "pixel_values"

    def __init__(self, config: SegmentationConfig):
        super().__init__(config)
        if not config.backbone_config:
            raise ValueError("SegmentationConfig.backbone_config is empty: build the model with "
                             "BackboneForSemanticSegmentation.from_backbone(encoder, num_labels)")
        self.backbone = build_backbone(config.backbone_config)
        channels, layers = feature_dimension(self.backbone), []
        for _ in range(config.decoder_layers):
            layers += [nn.ConvTranspose2d(channels, config.decoder_width, kernel_size=3, stride=2, padding=1,
                                          output_padding=1),
                       nn.BatchNorm2d(config.decoder_width), nn.GELU()]
            channels = config.decoder_width
        self.decoder = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Keep every module's own initialisation: the backbone's and PyTorch's for the decoder."""

    @classmethod
    def from_backbone(cls, encoder: nn.Module, num_labels: int, num_decoder_layers: int,
                      id2label: dict[int, str] | None = None, image_size: int | None = None,
                      **config_values) -> BackboneForSemanticSegmentation:
        """A model whose backbone holds `encoder`'s weights (copied) and whose decoder is new.

        Args:
            encoder: a plain transformers encoder or timm model (`hf_ssl.backbones.load_backbone`).
            num_labels: K, background included.
            num_decoder_layers: see `decoder_layers`.
            id2label: class names; ``"class_<k>"`` by default.
            image_size: the training images' side (default: the encoder config's, else 224).
        """
        id2label = id2label or {index: f"class_{index}" for index in range(num_labels)}
        if image_size is None:
            image_size = getattr(getattr(encoder, "config", None), "image_size", 224)
            image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
        config = SegmentationConfig(
            backbone_config=nested_backbone_config(encoder), decoder_layers=num_decoder_layers, image_size=image_size,
            num_labels=num_labels, id2label=id2label, label2id={name: index for index, name in id2label.items()},
            **config_values,
        )
        model = cls(config)
        expected = model.backbone.state_dict().keys()  # DINOv2's classes keep their mask token
        state = {name: tensor for name, tensor in encoder.state_dict().items()
                 if name in expected or not name.startswith(_UNUSED_ENCODER_WEIGHTS)}
        model.backbone.load_state_dict(state)
        return model.to(next(encoder.parameters()).device)

    def get_backbone(self) -> nn.Module:
        return self.backbone

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> SemanticSegmenterOutput:
        """Args:
            pixel_values: ``(B, C, H, W)``.
            labels: ``(B, H, W)`` class indices, ``semantic_loss_ignore_index`` where unlabelled;
                gives ``loss``, the mean per-pixel cross-entropy over labelled pixels.

        Returns:
            `SemanticSegmenterOutput` with ``logits`` ``(B, K, H, W)``.
        """
        features = spatial_features(self.backbone, pixel_values).permute(0, 3, 1, 2)  # (B, D, h, w)
        logits = self.classifier(self.decoder(features))  # (B, K, h * 2^layers, w * 2^layers)
        logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels.long(), ignore_index=self.config.semantic_loss_ignore_index)
        return SemanticSegmenterOutput(loss=loss, logits=logits)


__all__ = ["BackboneForSemanticSegmentation", "decoder_layers"]
