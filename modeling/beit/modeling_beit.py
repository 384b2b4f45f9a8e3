"""BEiT pre-training (Bao et al. 2021, arXiv:2106.08254) on transformers' ViT, with the targets of
a patch tokenizer (the SplitMask paper's k-means vocabulary) instead of BEiT's dVAE.

One block-wise mask per image; the encoder sees every position, a learned mask token in place of
each hidden patch; a linear classifier predicts the hidden patches' tokens (cross-entropy). The
encoder is transformers' plain `ViTModel` or, with ``encoder_type="beit"``, its `BeitModel` (drop
path, layer scale, shared relative position bias: the published BEiT encoder; see
`hf_ssl.vit_encoders`), so `export_backbone` writes a checkpoint any transformers user loads with
`AutoModel` / `AutoModelForImageClassification`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.modeling_outputs import ModelOutput

from hf_ssl.losses import masked_token_cross_entropy
from hf_ssl.masking import beit_mask, beit_num_masked_patches, split_indices
from hf_ssl.token_prediction import PatchTokenPreTrainedModel
from hf_ssl.tokenizer import PatchTokenizer
from hf_ssl.vit_encoders import build_encoder, check_pixel_values, embed_patches, encode_tokens, initialize_beit_encoder

from .configuration_beit import BEiTConfig


@dataclass
class BEiTOutput(ModelOutput):
    """Output of [`ViTForBEiT`].

    Args:
        loss: ``mim_loss_weight * mim_loss``.
        mim_loss: cross-entropy of the token predictions at the hidden patches.
        logits: ``(B, M, V)`` token logits at the M hidden patches.
        target_token_ids: ``(B, M)`` the tokenizer's tokens of those patches.
        hidden_patch_indices: ``(B, M)`` grid positions of the hidden patches.
        bool_masked_pos: ``(B, N)`` the mask (True = hidden).
        encoder_last_hidden_state: ``(B, 1 + N, hidden)`` encoder outputs, CLS first.
    """

    loss: torch.FloatTensor | None = None
    mim_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    target_token_ids: torch.LongTensor | None = None
    hidden_patch_indices: torch.LongTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None


class BEiTPreTrainedModel(PatchTokenPreTrainedModel):
    config_class = BEiTConfig
    base_model_prefix = "beit_pretraining"

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ViTForBEiT) and module.mask_token is not None:
            std = self.config.initializer_range
            nn.init.trunc_normal_(module.mask_token, mean=0.0, std=std, a=-std, b=std)


class ViTForBEiT(BEiTPreTrainedModel):
    """BEiT pre-training on a ViT encoder.

    Submodules: `vit` (a plain `ViTModel`, which keeps its own mask token) or `beit` (a
    `BeitModel`, ``encoder_type="beit"``): the encoder you export; `mask_token` (a `BeitModel`'s,
    held here because `BeitConfig` would carry it into the export); `token_classifier` (linear, to
    the vocabulary); `tokenizer` (the fixed patch codebook, a buffer).
    """

    def __init__(self, config: BEiTConfig):
        super().__init__(config)
        encoder = build_encoder(config.encoder_type, config.encoder_config(), use_mask_token=config.encoder_type == "vit")
        encoder.config._attn_implementation = config._attn_implementation
        setattr(self, config.encoder_type, encoder)  # `vit` or `beit`: the name says which checkpoint it exports
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.encoder_type == "beit" else None
        self.token_classifier = nn.Linear(config.hidden_size, config.tokenizer_vocab_size)
        self.tokenizer = PatchTokenizer(
            config.tokenizer_vocab_size, config.patch_size, config.tokenizer_resolution, config.num_channels
        )
        self.post_init()
        if config.encoder_type == "beit" and self.beit.embeddings.cls_token.device.type != "meta":
            # BEiT's own initialisation (beit/modeling_pretrain.py: truncated at one std, then
            # the per-depth rescaling of the residual branches).
            std = config.initializer_range
            initialize_beit_encoder(self.beit, std=std, truncation=std)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BEiTOutput:
        """Compute the pre-training loss.

        Args:
            pixel_values: ``(B, C, H, W)`` normalised images, H = W = `config.image_size`.
            bool_masked_pos: optional ``(B, N)`` bool, True = hidden patch, the same number in every
                image. Sampled here (`config.mask_strategy`) when omitted.
        """
        config = self.config
        check_pixel_values(pixel_values, config.num_channels, config.image_size)
        target_tokens = self.target_tokens(pixel_values)  # (B, N)
        mask = self._given_mask(bool_masked_pos, pixel_values)
        num_hidden = None  # a given mask's count is read (and checked) from the mask
        if mask is None:  # a drawn mask hides a known count: nothing is read back from the device
            num_hidden = beit_num_masked_patches(config.grid_size, config.mask_ratio)
            mask = beit_mask(config.mask_strategy, pixel_values.shape[0], config.grid_size, config.mask_ratio).to(
                pixel_values.device, non_blocking=True)
        hidden_indices, _ = split_indices(mask, num_hidden)  # (B, M)
        if hidden_indices.shape[1] == 0:
            raise ValueError("a BEiT mask must hide at least one patch in every image")
        encoder = self.get_backbone()
        mask_token = self.mask_token if self.mask_token is not None else encoder.embeddings.mask_token
        tokens = embed_patches(encoder, pixel_values, bool_masked_pos=mask, mask_token=mask_token)  # (B, N, D)
        encoded = encode_tokens(encoder, tokens, config.grid_size)  # (B, 1 + N, D)
        logits = self._predict_hidden(encoded, hidden_indices)  # (B, M, V)
        targets = target_tokens.gather(1, hidden_indices)
        mim_loss = masked_token_cross_entropy(logits, targets)
        return BEiTOutput(
            loss=config.mim_loss_weight * mim_loss,
            mim_loss=mim_loss,
            logits=logits,
            target_token_ids=targets,
            hidden_patch_indices=hidden_indices,
            bool_masked_pos=mask,
            encoder_last_hidden_state=encoded,
        )


__all__ = ["BEiTOutput", "BEiTPreTrainedModel", "ViTForBEiT"]
