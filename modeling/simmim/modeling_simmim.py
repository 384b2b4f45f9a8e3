"""SimMIM pre-training models on transformers' own ViT and Swin encoders.

SimMIM: Xie et al. 2021, "SimMIM: a Simple Framework for Masked Image Modeling", arXiv:2111.09886.

The encoders (`ViTModel`, `SwinModel` with their built-in learned mask token) and the one-layer
prediction head (a 1x1 convolution to ``stride**2 * C`` channels followed by pixel shuffle) are the
same modules transformers' `ViTForMaskedImageModeling` / `SwinForMaskedImageModeling` use, under the
same parameter names, so their checkpoints load here and ours load there. What SimMIM adds is the
method: masks drawn inside `forward` on a grid of mask patches (default 32 px, independent of the
encoder's patch size), the random / square / block-wise strategies, and the L1 loss on hidden
pixels only (`hf_ssl.losses.reconstruction.masked_l1_loss`).

With ``encoder_type="beit"`` the ViT is transformers' `BeitModel` (drop path, layer scale, shared
relative position bias, no absolute positions: SimMIM's published ViT-B, microsoft/SimMIM
models/vision_transformer.py), its mask token held by the model (see `hf_ssl.vit_encoders`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BeitModel, SwinModel, ViTModel
from transformers.modeling_outputs import BaseModelOutput, ModelOutput
from transformers.models.swin.modeling_swin import SwinPreTrainedModel
from transformers.models.vit.modeling_vit import ViTPreTrainedModel
from transformers.utils.generic import can_return_tuple

from hf_ssl.backbones.contract import BackboneContractMixin
from hf_ssl.losses.reconstruction import masked_l1_loss
from hf_ssl.masking.simmim import SimMIMMaskGenerator, upsample_patch_mask
from hf_ssl.vit_encoders import build_encoder, embed_patches, encode_tokens, initialize_beit_encoder

from .configuration_simmim import SimMIMConfig

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


class _SimMIMMethod(BackboneContractMixin):
    """What SimMIM adds on top of an encoder: masks and the loss (the backbone contract comes from
    `BackboneContractMixin`).

    The concrete classes set `encoder_attribute` (``"vit"`` / ``"swin"``) and `num_prefix_tokens`
    (tokens before the patch grid in the encoder output: ViT's CLS).
    """

    config: SimMIMConfig
    encoder_attribute: str
    num_prefix_tokens: int = 0

    def _masked_reconstruction(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, **kwargs) -> "SimMIMOutput":
        """Mask, encode, predict every pixel from the last feature grid, score the hidden ones."""
        bool_masked_pos = self._check_inputs(pixel_values, bool_masked_pos)
        outputs = self._encode(pixel_values, bool_masked_pos, **kwargs)
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

    def _encode(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor, **kwargs):
        """The encoder's output on masked images (its own mask token replaces the hidden patches)."""
        return self.get_backbone()(pixel_values, bool_masked_pos=bool_masked_pos, **kwargs)

    def _reset_prediction_head(self) -> None:
        """PyTorch's default init for the 1x1 convolution, as in the official code (its `SimMIM`
        module leaves the head to PyTorch; transformers would draw it from N(0, 0.02))."""
        if self.decoder[0].weight.device.type != "meta":
            self.decoder[0].reset_parameters()

    def get_backbone(self) -> ViTModel | BeitModel | SwinModel:
        """The live encoder (a transformers `ViTModel` / `BeitModel` / `SwinModel`, weights shared with
        this model; `export_backbone` drops a ViT's or Swin's mask token)."""
        return getattr(self, self.encoder_attribute)


class ViTForSimMIM(_SimMIMMethod, ViTPreTrainedModel):
    """SimMIM on a ViT encoder: mask token at hidden patches, 1x1-conv head, L1 on hidden pixels.

    The head upsamples by the ViT patch size; the CLS token is not used by the head. The encoder
    is `vit` (a `ViTModel` with its mask token) or, with ``config.encoder_type="beit"``, `beit` (a
    `BeitModel`) next to the model's `mask_token`.
    """

    config: SimMIMConfig
    config_class = SimMIMConfig
    base_model_prefix = "vit"
    num_prefix_tokens = 1  # CLS

    def __init__(self, config: SimMIMConfig):
        if config.backbone != "vit":
            raise ValueError(f"ViTForSimMIM needs config.backbone='vit', got {config.backbone!r} (use SwinForSimMIM)")
        super().__init__(config)
        self.encoder_attribute = config.encoder_type
        encoder = build_encoder(config.encoder_type, config.encoder_config(), use_mask_token=config.encoder_type == "vit")
        setattr(self, config.encoder_type, encoder)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.encoder_type == "beit" else None
        self.decoder = prediction_head(config.hidden_size, config.encoder_stride, config.num_channels)
        self.post_init()
        self._reset_prediction_head()
        if self.mask_token is not None and self.mask_token.device.type != "meta":
            # SimMIM's ViT: timm's truncated normal (bounds +-2) for the encoder, the mask token
            # truncated at one std (models/simmim.py, VisionTransformerForSimMIM).
            std = config.initializer_range
            initialize_beit_encoder(self.beit, std=std, truncation=2.0)
            nn.init.trunc_normal_(self.mask_token, std=std, a=-std, b=std)

    def _encode(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor, **kwargs):
        if self.mask_token is None:
            return super()._encode(pixel_values, bool_masked_pos, **kwargs)
        tokens = embed_patches(self.beit, pixel_values, bool_masked_pos, self.mask_token)  # (B, N, D)
        return BaseModelOutput(last_hidden_state=encode_tokens(self.beit, tokens, self.config.grid_size))

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

    def __init__(self, config: SimMIMConfig):
        if config.backbone != "swin":
            raise ValueError(f"SwinForSimMIM needs config.backbone='swin', got {config.backbone!r} (use ViTForSimMIM)")
        super().__init__(config)
        self.swin = SwinModel(config.encoder_config(), add_pooling_layer=False, use_mask_token=True)
        self.decoder = prediction_head(config.hidden_size, config.encoder_stride, config.num_channels)
        self.post_init()
        self._reset_prediction_head()

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


__all__ = ["SimMIMOutput", "SwinForSimMIM", "ViTForSimMIM", "prediction_head"]
