"""SplitMask masked image modeling on transformers' ViT.

SplitMask: El-Nouby et al. 2021, arXiv:2112.10740. Each image's patches are split at random into
two disjoint halves; each half is a masked view whose visible patches alone go through the ViT
encoder (half of BEiT's encoder cost), a shallow ViT decoder places a learned mask token at the
hidden positions and a linear classifier predicts the patch-tokenizer token of every hidden patch
(cross-entropy). The mean of each branch's decoder outputs is a global descriptor; InfoNCE
matches the two branches of an image against the rest of the (global) batch.

The encoder is transformers' plain `ViTModel` or, with ``encoder_type="beit"``, its `BeitModel`
(drop path, layer scale, shared relative position bias: the published BEiT encoder; see
`hf_ssl.vit_encoders`), so `export_backbone` writes a checkpoint any transformers user loads
with `AutoModel` / `AutoModelForImageClassification`. SplitMask's visible-half encoding gathers
the shared relative position bias at the kept positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.modeling_outputs import ModelOutput
from transformers.models.vit.modeling_vit import ViTLayer

from hf_ssl.losses import info_nce_loss, masked_token_cross_entropy
from hf_ssl.masking import random_split_mask, split_indices
from hf_ssl.token_prediction import PatchTokenPreTrainedModel
from hf_ssl.tokenizer import PatchTokenizer
from hf_ssl.vit_encoders import build_encoder, check_pixel_values, embed_patches, encode_tokens, initialize_beit_encoder

from .configuration_splitmask import SplitMaskConfig


@dataclass
class SplitMaskOutput(ModelOutput):
    """Output of [`ViTForSplitMask`].

    Args:
        loss: ``mim_loss_weight * (MIM(A) + MIM(B)) + contrastive_loss_weight * InfoNCE``.
        mim_loss: mean cross-entropy of the token predictions at hidden patches, the mean of the
            two branches' MIM (None with ``use_mim_loss=False``).
        contrastive_loss: InfoNCE between the two branches (None with ``use_contrastive_loss=False``).
        logits: ``(2 * B, M, vocab)`` token scores at the M hidden patches of each view, views
            stacked along the batch dim (None for an odd number of patches, whose views differ in M).
        target_token_ids: ``(2 * B, M)`` tokenizer targets of those patches.
        hidden_patch_indices: ``(2 * B, M)`` patch index of each prediction (row-major grid).
        bool_masked_pos: ``(B, N)`` the split (True = group A, hidden in view 1, visible in view 2).
        global_descriptors: ``(2, B, D)`` branch descriptors given to InfoNCE (with the contrastive
            term; D = `projection_dim` with the projection head, else the decoder width).
        encoder_last_hidden_state: ``(2 * B, 1 + K, hidden)`` encoder outputs (CLS first).
    """

    loss: torch.FloatTensor | None = None
    mim_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    target_token_ids: torch.LongTensor | None = None
    hidden_patch_indices: torch.LongTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    global_descriptors: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None


class SplitMaskPreTrainedModel(PatchTokenPreTrainedModel):
    config_class = SplitMaskConfig
    base_model_prefix = "splitmask"

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SplitMaskDecoder):
            std = self.config.initializer_range
            nn.init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            nn.init.trunc_normal_(module.mask_token, mean=0.0, std=std)


class SplitMaskDecoder(nn.Module):
    """Shallow ViT decoder over full-length sequences ``(B, 1 + N, decoder_hidden)``.

    Holds the learned mask token and position embeddings; blocks are transformers' `ViTLayer`.
    """

    def __init__(self, config: SplitMaskConfig, attn_implementation: str | None):
        super().__init__()
        block_config = config.decoder_config()
        block_config._attn_implementation = attn_implementation
        self.embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + config.num_patches, config.decoder_hidden_size))
        self.layers = nn.ModuleList([ViTLayer(block_config) for _ in range(config.decoder_num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)

    def fill_hidden_positions(self, encoded: torch.Tensor, visible_indices: torch.Tensor, num_patches: int) -> torch.Tensor:
        """Project encoder outputs and scatter them into a full grid of mask tokens.

        Args:
            encoded: ``(B, 1 + K, hidden)`` encoder outputs of the K visible patches (CLS first).
            visible_indices: ``(B, K)`` grid positions of those patches.

        Returns:
            ``(B, 1 + N, decoder_hidden)`` with mask tokens at the N - K hidden positions.
        """
        projected = self.embed(encoded)  # (B, 1 + K, Dd)
        batch_size, _, width = projected.shape
        grid = self.mask_token.to(projected.dtype).expand(batch_size, num_patches, width)
        index = visible_indices.unsqueeze(-1).expand(-1, -1, width)
        grid = grid.scatter(1, index, projected[:, 1:])  # (B, N, Dd)
        return torch.cat([projected[:, :1], grid], dim=1)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        hidden = sequence + self.position_embeddings.to(sequence.dtype)
        for layer in self.layers:
            hidden = layer(hidden)
        return self.layernorm(hidden)


class ViTForSplitMask(SplitMaskPreTrainedModel):
    """SplitMask pre-training on a ViT encoder.

    Submodules: `vit` (a plain `ViTModel`) or `beit` (a `BeitModel`, ``encoder_type="beit"``): the
    encoder you export; `decoder` (shallow ViT decoder); `token_classifier` (linear, to the
    vocabulary); `tokenizer` (the fixed patch codebook, a buffer); `projection` (optional MLP on
    the global descriptor before InfoNCE).
    """

    def __init__(self, config: SplitMaskConfig):
        super().__init__(config)
        encoder = build_encoder(config.encoder_type, config.encoder_config())
        encoder.config._attn_implementation = config._attn_implementation
        setattr(self, config.encoder_type, encoder)  # `vit` or `beit`: the name says which checkpoint it exports
        self.decoder = SplitMaskDecoder(config, config._attn_implementation)
        classifier_width = config.decoder_hidden_size
        self.token_classifier = nn.Linear(classifier_width, config.tokenizer_vocab_size)
        self.projection = (
            nn.Sequential(
                nn.Linear(classifier_width, classifier_width), nn.GELU(), nn.Linear(classifier_width, config.projection_dim)
            )
            if config.use_contrastive_loss and config.use_projection_head
            else None
        )
        self.tokenizer = PatchTokenizer(
            config.tokenizer_vocab_size, config.patch_size, config.tokenizer_resolution, config.num_channels
        )
        self.post_init()
        if config.encoder_type == "beit" and self.beit.embeddings.cls_token.device.type != "meta":
            # BEiT's own initialisation (beit/modeling_pretrain.py: truncated at one std, then
            # the per-depth rescaling of the residual branches).
            std = config.initializer_range
            initialize_beit_encoder(self.beit, std=std, truncation=std)

    # ----- forward --------------------------------------------------------------------------

    def _encode_visible(self, patch_tokens: torch.Tensor, visible_indices: torch.Tensor) -> torch.Tensor:
        """Run the encoder on the visible patches only.

        Args:
            patch_tokens: ``(B, N, hidden)`` embedded patches with positions.
            visible_indices: ``(B, K)`` patches to keep.

        Returns:
            ``(B, 1 + K, hidden)`` final-layernormed encoder outputs, CLS first.
        """
        width = patch_tokens.shape[-1]
        visible = patch_tokens.gather(1, visible_indices.unsqueeze(-1).expand(-1, -1, width))  # (B, K, D)
        return encode_tokens(self.get_backbone(), visible, self.config.grid_size, positions=visible_indices)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SplitMaskOutput:
        """Compute the pre-training loss.

        Args:
            pixel_values: ``(B, C, H, W)`` normalised images, H = W = `config.image_size`.
            bool_masked_pos: optional ``(B, N)`` bool, the split: True = group A (exactly ``N // 2``
                per row). Sampled here when omitted.
        """
        config = self.config
        check_pixel_values(pixel_values, config.num_channels, config.image_size)
        target_tokens = self.target_tokens(pixel_values) if config.use_mim_loss else None  # (B, N)
        batch_size = pixel_values.shape[0]
        num_patches = config.num_patches
        split = self._given_mask(bool_masked_pos, pixel_values)
        if split is None:
            split = random_split_mask(batch_size, num_patches, device=pixel_values.device)
        elif not bool(torch.all(split.sum(dim=1) == num_patches // 2)):
            raise ValueError(f"a SplitMask split must mark exactly num_patches // 2 = {num_patches // 2} patches per image")
        group_a, group_b = split_indices(split, num_patches // 2)  # (B, N//2), (B, N - N//2)
        patch_tokens = embed_patches(self.get_backbone(), pixel_values)  # (B, N, D)

        # View 1 shows group B and hides A; view 2 shows A and hides B.
        views = [(group_b, group_a), (group_a, group_b)]
        if group_a.shape[1] == group_b.shape[1]:
            # Equal halves: both views in one encoder call of batch 2B.
            views = [(torch.cat([group_b, group_a]), torch.cat([group_a, group_b]))]  # (2B, N/2) each
            patch_tokens = patch_tokens.repeat(2, 1, 1)
            target_tokens = target_tokens.repeat(2, 1) if target_tokens is not None else None

        logits, targets, branch_losses, hidden_positions, descriptors, encoded_views = [], [], [], [], [], []
        for visible_indices, hidden_indices in views:
            encoded = self._encode_visible(patch_tokens, visible_indices)  # (b, 1 + K, D)
            decoded = self.decoder(self.decoder.fill_hidden_positions(encoded, visible_indices, num_patches))
            if config.use_mim_loss:
                logits.append(self._predict_hidden(decoded, hidden_indices))
                targets.append(target_tokens.gather(1, hidden_indices))
                branch_losses.append(masked_token_cross_entropy(logits[-1], targets[-1]))
            hidden_positions.append(hidden_indices)
            descriptors.append(decoded[:, 1:].mean(dim=1))  # (b, Dd) average of decoder outputs
            encoded_views.append(encoded)

        mim_loss = None
        if len(views) == 1:
            descriptor_a, descriptor_b = descriptors[0].chunk(2)
            hidden_all, encoded_all = hidden_positions[0], encoded_views[0]
            if config.use_mim_loss:
                # One cross-entropy over both views' predictions: the mean of MIM(A) and MIM(B),
                # which hold the same number of patches.
                mim_loss = branch_losses[0]
                mim_sum = 2 * mim_loss
        else:
            # Odd N: the views differ by one patch, so they are encoded separately.
            descriptor_a, descriptor_b = descriptors
            hidden_all, encoded_all = None, None
            if config.use_mim_loss:
                mim_sum = branch_losses[0] + branch_losses[1]
                mim_loss = 0.5 * mim_sum
        logits_all = logits[0] if config.use_mim_loss and len(views) == 1 else None
        targets_all = targets[0] if config.use_mim_loss and len(views) == 1 else None

        loss = config.mim_loss_weight * mim_sum if config.use_mim_loss else None
        contrastive_loss = None
        global_descriptors = None
        if config.use_contrastive_loss:
            if self.projection is not None:
                descriptor_a, descriptor_b = self.projection(descriptor_a), self.projection(descriptor_b)
            global_descriptors = torch.stack([descriptor_a, descriptor_b])  # (2, B, P)
            contrastive_loss = info_nce_loss(
                descriptor_a,
                descriptor_b,
                temperature=config.contrastive_temperature,
                gather_distributed=config.gather_negatives_across_processes,
            )
            weighted = config.contrastive_loss_weight * contrastive_loss
            loss = weighted if loss is None else loss + weighted
        return SplitMaskOutput(
            loss=loss,
            mim_loss=mim_loss,
            contrastive_loss=contrastive_loss,
            logits=logits_all,
            target_token_ids=targets_all,
            hidden_patch_indices=hidden_all,
            bool_masked_pos=split,
            global_descriptors=global_descriptors,
            encoder_last_hidden_state=encoded_all,
        )

__all__ = ["SplitMaskConfig", "SplitMaskOutput", "SplitMaskPreTrainedModel", "ViTForSplitMask"]
