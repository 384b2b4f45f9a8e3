"""The family of models that predict the patch-tokenizer tokens of hidden patches with a ViT
encoder (BEiT, SplitMask): the config fields and the pre-trained-model base they share.

The encoder is transformers' `ViTModel` or `BeitModel` (`hf_ssl.vit_encoders`); the targets come
from a `PatchTokenizer` whose vocabulary is fitted on training images before training and named
by ``config.tokenizer_fingerprint``, so a model refuses to compute targets from a vocabulary that
is missing or is not the one its config names.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BeitConfig, PreTrainedConfig, PreTrainedModel, ViTConfig
from transformers.models.vit.modeling_vit import ViTEmbeddings

from hf_ssl.backbones.contract import BackboneContractMixin
from hf_ssl.config_checks import require, require_positive_ints
from hf_ssl.tokenizer import codebook_fingerprint
from hf_ssl.vit_encoders import ENCODER_TYPES, beit_encoder_config, check_beit_fields, vit_encoder_config

TOKENIZER_METHODS = ("kmeans", "random_patches", "uniform")


class PatchTokenConfig(PreTrainedConfig):
    r"""The fields every patch-token method has: the ViT encoder (defaults: ViT-S/16), BEiT's encoder
    options, the patch tokenizer and the MIM weight.

    Args:
        image_size (`int`, defaults to 224): input resolution (square).
        patch_size (`int`, defaults to 16): ViT patch size; must divide `image_size`.
        num_channels (`int`, defaults to 3): input channels.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        hidden_dropout_prob, attention_probs_dropout_prob, layer_norm_eps, qkv_bias:
            the encoder, as in `ViTConfig` (defaults: ViT-S/16).
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init.
        encoder_type (`"vit"` or `"beit"`, defaults to `"vit"`): transformers' `ViTModel`, or its
            `BeitModel` (the ViT of the BEiT paper: the fields below).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth of the last block, linear from 0
            over depth (BEiT: 0.1); `"beit"` only.
        layer_scale_init_value (`float`, defaults to 0.0): initial layer-scale value, 0 disables it
            (BEiT: 0.1 for base, 1e-5 for large); `"beit"` only.
        use_absolute_position_embeddings (`bool`, defaults to `True`): learned absolute positions
            (BEiT pre-training: off, it uses the shared relative position bias instead).
        use_shared_relative_position_bias (`bool`, defaults to `False`): one relative position bias
            table shared by all blocks (BEiT pre-training); `"beit"` only.
        use_relative_position_bias (`bool`, defaults to `False`): one table per block (BEiT
            fine-tuning); `"beit"` only, and not for SplitMask (it encodes a subset of the patches,
            for which only the shared table can be gathered).
        tokenizer_vocab_size (`int`, defaults to 8192): vocabulary size V of the patch tokenizer.
        tokenizer_resolution (`int`, defaults to 8): patches are downsampled to r x r x C vectors.
        tokenizer_method (`"kmeans"`, `"random_patches"` or `"uniform"`): how the vocabulary is built.
        tokenizer_fingerprint (`str`, *optional*): content hash of the fitted vocabulary, set by
            `fit_tokenizer`; `None` means "not fitted" and the model refuses to compute targets.
        mim_loss_weight (`float`, defaults to 1.0): weight of each MIM cross-entropy.
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    initializer_range: float = 0.02
    encoder_type: str = "vit"
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 0.0
    use_absolute_position_embeddings: bool = True
    use_relative_position_bias: bool = False
    use_shared_relative_position_bias: bool = False
    tokenizer_vocab_size: int = 8192
    tokenizer_resolution: int = 8
    tokenizer_method: str = "kmeans"
    tokenizer_fingerprint: str | None = None
    mim_loss_weight: float = 1.0

    def check_shared_fields(self) -> None:
        """Raise a ValueError naming the first unusable shared field."""
        require_positive_ints(self, ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                                     "num_attention_heads", "tokenizer_vocab_size", "tokenizer_resolution"))
        require(self, self.image_size % self.patch_size == 0,
                f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        require(self, self.hidden_size % self.num_attention_heads == 0,
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        require(self, self.tokenizer_method in TOKENIZER_METHODS,
                f"tokenizer_method must be one of {TOKENIZER_METHODS}, got {self.tokenizer_method!r}")
        require(self, self.encoder_type in ENCODER_TYPES, f"encoder_type must be one of {ENCODER_TYPES}, got {self.encoder_type!r}")
        check_beit_fields(self)
        require(self, self.mim_loss_weight >= 0, f"mim_loss_weight must be >= 0, got {self.mim_loss_weight}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    def encoder_config(self) -> ViTConfig | BeitConfig:
        """The `ViTConfig` / `BeitConfig` of the encoder: what `export_backbone` writes."""
        if self.encoder_type == "beit":
            return beit_encoder_config(self)
        return vit_encoder_config(self)


class PatchTokenPreTrainedModel(BackboneContractMixin, PreTrainedModel):
    """Base of a patch-token model that holds ``self.tokenizer`` (a `PatchTokenizer`) and its encoder
    as ``self.vit`` / ``self.beit`` (``config.encoder_type``)."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTEmbeddings", "ViTLayer", "BeitEmbeddings", "BeitLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _verified_fingerprint: str | None = None

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, ViTEmbeddings):
            nn.init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            nn.init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            if module.mask_token is not None:
                nn.init.trunc_normal_(module.mask_token, mean=0.0, std=std)

    def get_backbone(self):
        """The encoder, a transformers `ViTModel` or `BeitModel` (weights shared with this model;
        a `ViTModel`'s mask token is dropped by `export_backbone`)."""
        return getattr(self, self.config.encoder_type)

    @torch.no_grad()
    def fit_tokenizer(self, image_batches, num_epochs: int = 3, seed: int = 0, progress: bool = True) -> list[float]:
        """Build the patch vocabulary from training images with `config.tokenizer_method`.

        Args:
            image_batches: iterable of ``(B, C, H, W)`` pixel batches, normalised as in training.

        Returns:
            The k-means quantization error of each mini-batch (empty for the other methods).
        """
        errors = self.tokenizer.fit(
            image_batches, method=self.config.tokenizer_method, num_epochs=num_epochs, seed=seed, progress=progress
        )
        self.config.tokenizer_fingerprint = codebook_fingerprint(self.tokenizer.codebook)
        self._verified_fingerprint = self.config.tokenizer_fingerprint
        return errors

    def target_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` token ids of the patches of ``(B, C, H, W)`` images, after checking the vocabulary."""
        self._check_tokenizer()
        return self.tokenizer.encode(pixel_values)

    def _given_mask(self, bool_masked_pos: torch.Tensor | None, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """A caller's ``(B, N)`` patch mask as bool on the images' device, after checking its shape;
        None stays None (the model samples one)."""
        if bool_masked_pos is None:
            return None
        expected = (pixel_values.shape[0], self.config.num_patches)
        if tuple(bool_masked_pos.shape) != expected:
            raise ValueError(f"bool_masked_pos must be (batch, num_patches) = {expected}, got {tuple(bool_masked_pos.shape)}")
        return bool_masked_pos.to(device=pixel_values.device, dtype=torch.bool)

    def _predict_hidden(self, outputs: torch.Tensor, hidden_indices: torch.Tensor) -> torch.Tensor:
        """Token logits ``(B, M, V)`` at the hidden positions ``(B, M)`` of ``(B, 1 + N, D)`` outputs (CLS first)."""
        patch_outputs = outputs[:, 1:]
        gathered = patch_outputs.gather(1, hidden_indices.unsqueeze(-1).expand(-1, -1, patch_outputs.shape[-1]))
        return self.token_classifier(gathered)

    def _check_tokenizer(self) -> None:
        expected = self.config.tokenizer_fingerprint
        if expected is None:
            raise RuntimeError(
                "The patch tokenizer of this model has no vocabulary yet, so MIM targets would be "
                "meaningless. Fit it on training images first: model.fit_tokenizer(image_batches) "
                "(trainers/pretrain.py does this before training)."
            )
        if self._verified_fingerprint == expected or self.tokenizer.codebook.dtype != torch.float32:
            return
        actual = codebook_fingerprint(self.tokenizer.codebook)
        if actual != expected:
            raise RuntimeError(
                f"The tokenizer vocabulary does not match config.tokenizer_fingerprint ({actual} != {expected}): "
                "the weights and the config come from different runs, or the checkpoint was loaded with a "
                f"different tokenizer_vocab_size (this model: {self.config.tokenizer_vocab_size}) and its "
                "vocabulary was re-initialised."
            )
        self._verified_fingerprint = expected


__all__ = ["TOKENIZER_METHODS", "PatchTokenConfig", "PatchTokenPreTrainedModel"]
