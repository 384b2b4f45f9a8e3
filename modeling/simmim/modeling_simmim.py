"""SimMIM pre-training models on transformers' own ViT and Swin encoders.

SimMIM: Xie et al. 2021, "SimMIM: a Simple Framework for Masked Image Modeling", arXiv:2111.09886.

The encoders (`ViTModel`, `SwinModel` with their built-in learned mask token) and the one-layer
prediction head (a 1x1 convolution to ``stride**2 * C`` channels followed by pixel shuffle) are the
same modules transformers' `ViTForMaskedImageModeling` / `SwinForMaskedImageModeling` use, under the
same parameter names, so their checkpoints load here and ours load there. What SimMIM adds is the
method: masks drawn inside `forward` on a grid of mask patches (default 32 px, independent of the
encoder's patch size), the random / square / block-wise strategies, and the L1 loss on hidden
pixels only (`hf_ssl.losses.reconstruction.masked_l1_loss`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import SwinModel, ViTImageProcessor, ViTModel
from transformers.modeling_outputs import ModelOutput
from transformers.models.swin.modeling_swin import SwinPreTrainedModel
from transformers.models.vit.modeling_vit import ViTPreTrainedModel
from transformers.utils.generic import can_return_tuple

from hf_ssl.losses.reconstruction import masked_l1_loss
from hf_ssl.masking.simmim import SimMIMMaskGenerator, upsample_patch_mask

from .configuration_simmim import SimMIMConfig

# ImageNet statistics: what `light` augmentation normalises with unless the run says otherwise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SimMIMOutput(ModelOutput):
    """Output of [`ViTForSimMIM`] / [`SwinForSimMIM`].

    Args:
        loss: scalar L1 loss over hidden pixels.
        reconstruction: ``(B, C, H, W)`` predicted pixels (every position; only hidden ones are trained).
        bool_masked_pos: ``(B, N)`` bool on the encoder's patch grid, True = hidden (the mask used).
        hidden_states, attentions: the encoder's, when requested.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def prediction_head(in_channels: int, stride: int, num_channels: int) -> nn.Sequential:
    """SimMIM's linear head: 1x1 conv to ``stride**2 * C`` channels, then pixel shuffle by `stride`.

    Maps ``(B, D, H / stride, W / stride)`` features to ``(B, C, H, W)`` pixels.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, stride**2 * num_channels, kernel_size=1),
        nn.PixelShuffle(stride),
    )


def save_plain_encoder(
    encoder: nn.Module,
    save_directory: str | os.PathLike,
    image_size: int,
    image_mean: tuple[float, ...] | None = None,
    image_std: tuple[float, ...] | None = None,
) -> str:
    """Save a plain `ViTModel` / `SwinModel` and the `ViTImageProcessor` that feeds it.

    The folder loads with `AutoModel` / `AutoModelForImageClassification` /
    `AutoImageProcessor` without hf_ssl installed.
    """
    os.makedirs(save_directory, exist_ok=True)
    encoder.save_pretrained(save_directory)
    processor = ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_normalize=True,
        image_mean=list(image_mean or IMAGENET_MEAN),
        image_std=list(image_std or IMAGENET_STD),
    )
    processor.save_pretrained(save_directory)
    return str(save_directory)


class _SimMIMMethod:
    """What SimMIM adds on top of an encoder: masks, the loss, and backbone export.

    The concrete classes set `encoder_attribute` (``"vit"`` / ``"swin"``), `encoder_class` and
    `num_prefix_tokens` (tokens before the patch grid in the encoder output: ViT's CLS).
    """

    config: SimMIMConfig
    encoder_attribute: str
    encoder_class: type
    num_prefix_tokens: int = 0

    def _masked_reconstruction(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, **kwargs) -> "SimMIMOutput":
        """Mask, encode, predict every pixel from the last feature grid, score the hidden ones."""
        bool_masked_pos = self._check_inputs(pixel_values, bool_masked_pos)
        encoder = getattr(self, self.encoder_attribute)
        outputs = encoder(pixel_values, bool_masked_pos=bool_masked_pos, **kwargs)
        tokens = outputs.last_hidden_state[:, self.num_prefix_tokens :]  # (B, h * w, D) final feature grid
        batch_size, _, hidden_size = tokens.shape
        side = self.config.image_size // self.config.encoder_stride
        feature_map = tokens.transpose(1, 2).reshape(batch_size, hidden_size, side, side)  # (B, D, h, w)
        reconstruction = self.decoder(feature_map)  # (B, C, H, W)
        loss = self._loss(reconstruction, pixel_values, bool_masked_pos)
        return SimMIMOutput(
            loss=loss,
            reconstruction=reconstruction,
            bool_masked_pos=bool_masked_pos,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @property
    def mask_generator(self) -> SimMIMMaskGenerator:
        return SimMIMMaskGenerator(
            image_size=self.config.image_size,
            model_patch_size=self.config.patch_size,
            mask_patch_size=self.config.mask_patch_size,
            mask_ratio=self.config.mask_ratio,
            strategy=self.config.mask_strategy,
        )

    def _check_inputs(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None) -> torch.Tensor:
        """Validate shapes and draw a mask when none is given; returns ``(B, N)`` bool on the input's device."""
        batch_size, num_channels, height, width = pixel_values.shape
        size = self.config.image_size
        if (height, width) != (size, size) or num_channels != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be (B, {self.config.num_channels}, {size}, {size}) (config.num_channels, "
                f"config.image_size), got {tuple(pixel_values.shape)}"
            )
        if bool_masked_pos is None:
            bool_masked_pos = self.mask_generator(batch_size)
        expected = (batch_size, self.config.num_patches)
        if tuple(bool_masked_pos.shape) != expected:
            raise ValueError(
                f"bool_masked_pos must be (batch_size, num_patches) = {expected} on the encoder's "
                f"{self.config.patch_size}-px patch grid, got {tuple(bool_masked_pos.shape)}"
            )
        return bool_masked_pos.to(device=pixel_values.device, dtype=torch.bool)

    def _loss(self, reconstruction: torch.Tensor, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        batch_size = pixel_values.shape[0]
        size = self.config.image_size
        pixel_mask = upsample_patch_mask(bool_masked_pos, self.config.grid_size, self.config.patch_size)
        return masked_l1_loss(reconstruction, pixel_values, pixel_mask.view(batch_size, size, size))

    def get_backbone(self) -> ViTModel | SwinModel:
        """The live encoder (a transformers `ViTModel` / `SwinModel`, weights shared with this model)."""
        return getattr(self, self.encoder_attribute)

    def export_backbone(
        self,
        save_directory: str | os.PathLike,
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
    ) -> str:
        """Write the encoder as a plain transformers checkpoint (no mask token, no hf_ssl class).

        Args:
            save_directory: output folder (created).
            image_mean, image_std: normalisation the model was trained with (ImageNet's by default),
                written to ``preprocessor_config.json``.
        """
        encoder = self.encoder_class(self.config.encoder_config(), add_pooling_layer=self.encoder_class is SwinModel)
        state = {k: v for k, v in self.get_backbone().state_dict().items() if k != "embeddings.mask_token"}
        encoder.load_state_dict(state, strict=True)  # every weight moves; nothing is silently dropped
        return save_plain_encoder(encoder.eval(), save_directory, self.config.image_size, image_mean, image_std)


class ViTForSimMIM(_SimMIMMethod, ViTPreTrainedModel):
    """SimMIM on a ViT encoder: mask token at hidden patches, 1x1-conv head, L1 on hidden pixels.

    The head upsamples by the ViT patch size; the CLS token is not used by the head.
    """

    config: SimMIMConfig
    config_class = SimMIMConfig
    base_model_prefix = "vit"
    encoder_attribute = "vit"
    encoder_class = ViTModel
    num_prefix_tokens = 1  # CLS

    def __init__(self, config: SimMIMConfig):
        if config.backbone != "vit":
            raise ValueError(f"ViTForSimMIM needs config.backbone='vit', got {config.backbone!r} (use SwinForSimMIM)")
        super().__init__(config)
        self.vit = ViTModel(config.encoder_config(), add_pooling_layer=False, use_mask_token=True)
        self.decoder = prediction_head(config.hidden_size, config.encoder_stride, config.num_channels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        **kwargs,
    ) -> SimMIMOutput:
        """Mask, encode, predict pixels, and score hidden pixels.

        Args:
            pixel_values: ``(B, C, H, W)`` normalised images, ``H = W = config.image_size``.
            bool_masked_pos: ``(B, N)`` bool on the encoder's patch grid (True = hidden); drawn
                with `config.mask_strategy` when omitted.
        """
        return self._masked_reconstruction(pixel_values, bool_masked_pos, **kwargs)


class SwinForSimMIM(_SimMIMMethod, SwinPreTrainedModel):
    """SimMIM on a Swin encoder (the paper's main model): the head upsamples the last stage by 32 (Swin-T)."""

    config: SimMIMConfig
    config_class = SimMIMConfig
    base_model_prefix = "swin"
    encoder_attribute = "swin"
    encoder_class = SwinModel

    def __init__(self, config: SimMIMConfig):
        if config.backbone != "swin":
            raise ValueError(f"SwinForSimMIM needs config.backbone='swin', got {config.backbone!r} (use ViTForSimMIM)")
        super().__init__(config)
        self.swin = SwinModel(config.encoder_config(), add_pooling_layer=False, use_mask_token=True)
        self.decoder = prediction_head(config.hidden_size, config.encoder_stride, config.num_channels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        **kwargs,
    ) -> SimMIMOutput:
        """Mask, encode, predict pixels, and score hidden pixels.

        Args:
            pixel_values: ``(B, C, H, W)`` normalised images, ``H = W = config.image_size``.
            bool_masked_pos: ``(B, N)`` bool on the first stage's patch grid (True = hidden);
                drawn with `config.mask_strategy` when omitted.
        """
        return self._masked_reconstruction(pixel_values, bool_masked_pos, **kwargs)


__all__ = ["SimMIMOutput", "SwinForSimMIM", "ViTForSimMIM", "prediction_head", "save_plain_encoder"]
