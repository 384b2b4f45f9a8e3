"""MAE pre-training (`ViTForMAE`): transformers' `ViTMAEForPreTraining` plus hf-ssl's backbone contract.

MAE: He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377.
Nothing of the method is re-implemented: masking (per-sample shuffle, 75 % hidden), the encoder
on visible patches, the light decoder and the normalised-pixel MSE are transformers' code. This
subclass adds the backbone contract (`get_backbone` / `export_backbone` / `export_timm`), which
turns the `ViTMAEModel` encoder into a plain `ViTModel` (learned-position-embedding slot filled with
MAE's fixed sin-cos table), and returns an `MAEOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import ViTMAEForPreTraining, ViTModel
from transformers.models.vit_mae.modeling_vit_mae import (
    ViTMAEForPreTrainingOutput,
    build_2d_sinusoidal_position_embedding,
)

from hf_ssl.backbones.contract import BackboneContractMixin
from hf_ssl.backbones.modules import copy_backbone_weights

from .configuration_mae import MAEConfig

# transformers 5.x names the ViTMAEModel encoder weights exactly like ViTModel's (embeddings.*,
# layers.{i}.attention.{q,k,v,o}_proj, layers.{i}.mlp.fc1/fc2, layernorm); older releases used
# `encoder.layer.{i}` and `attention.attention.query`. The table is where a rename would go; the
# conversion below checks completeness and shapes either way, so a silent rename cannot slip through.
VIT_MAE_TO_VIT_RENAMES: tuple[tuple[str, str], ...] = ()


def vit_mae_encoder_to_vit_state_dict(
    mae_encoder_state: dict[str, torch.Tensor], vit_state_template: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map a `ViTMAEModel` state dict onto `ViTModel` (no pooler) parameter names.

    Args:
        mae_encoder_state: ``ViTMAEModel.state_dict()``.
        vit_state_template: ``ViTModel(config, add_pooling_layer=False).state_dict()``; gives the
            names and shapes every converted tensor must have.

    Raises:
        KeyError: a ViTModel weight has no MAE source, or an MAE encoder weight would be dropped.
        ValueError: a shape differs.
    """
    renamed = {}
    for name, tensor in mae_encoder_state.items():
        for old, new in VIT_MAE_TO_VIT_RENAMES:
            name = name.replace(old, new)
        renamed[name] = tensor
    missing = sorted(set(vit_state_template) - set(renamed))
    dropped = sorted(set(renamed) - set(vit_state_template))
    if missing or dropped:
        raise KeyError(f"ViTMAE -> ViT conversion: ViT weights without source {missing}, MAE weights dropped {dropped}")
    for name, template in vit_state_template.items():
        if renamed[name].shape != template.shape:
            raise ValueError(f"ViTMAE -> ViT conversion: {name} has shape {tuple(renamed[name].shape)}, "
                             f"ViTModel expects {tuple(template.shape)}")
    return {name: renamed[name].detach().clone() for name in vit_state_template}


def sinusoidal_table(position_embeddings: torch.Tensor) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table ``(1, 1 + N, D)`` (zero row for CLS) in transformers' layout.

    Halves are swapped to match the layout of released MAE checkpoints (transformers does the same).
    """
    _, length, dim = position_embeddings.shape
    grid_size = int(round((length - 1) ** 0.5))
    table = build_2d_sinusoidal_position_embedding(height=grid_size, width=grid_size, embed_dim=dim, cls_token=True)
    half = dim // 2
    table = torch.cat([table[..., half:], table[..., :half]], dim=-1)
    return table.view(1, length, dim).to(position_embeddings.dtype)


@dataclass
class MAEOutput(ViTMAEForPreTrainingOutput):
    """Output of [`ViTForMAE`]: transformers' MAE output (``loss``, ``logits`` ``(B, N, p*p*C)``,
    ``mask`` ``(B, N)`` with 1 = hidden, ``ids_restore``, ...) under hf-ssl's naming."""


class ViTForMAE(BackboneContractMixin, ViTMAEForPreTraining):
    """MAE on a ViT: transformers' `ViTMAEForPreTraining` with hf-ssl's backbone contract.

    `forward(pixel_values, noise=None, ...)` is transformers' own and returns an `MAEOutput`.
    """

    config: MAEConfig
    config_class = MAEConfig

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self._initialize_like_mae()

    def forward(self, *args, **kwargs) -> MAEOutput:
        outputs = super().forward(*args, **kwargs)
        if not isinstance(outputs, ViTMAEForPreTrainingOutput):
            return outputs  # return_dict=False: a tuple
        return MAEOutput(**outputs)

    @torch.no_grad()
    def _initialize_like_mae(self) -> None:
        """Give a freshly built model MAE's own initialisation (facebookresearch/mae models_mae.py,
        `initialize_weights` and `_init_weights`), which transformers 5.23 does not reproduce.

        - the fixed sin-cos tables: in `ViTMAEForPreTraining(config)` both stay all zeros (and
          frozen, so the model never learns positions): the inner `ViTMAEModel` initialises itself
          first and `ViTMAEEmbeddings.initialize_weights` returns early because its patch projection
          is already flagged as initialised; the decoder's table is zeroed after the decoder filled it;
        - the patch projection: xavier-uniform on its weight viewed as a ``(D, C * p * p)`` Linear;
        - CLS and mask tokens: N(0, 0.02) (MAE's "timm's trunc_normal_(std=.02) is effectively normal_");
        - every Linear: xavier-uniform weight and zero bias (transformers draws N(0, 0.02)), every
          LayerNorm weight 1 and bias 0.

        Loading with `from_pretrained` overwrites all of this with the checkpoint's values.
        """
        embeddings = self.vit.embeddings
        if embeddings.position_embeddings.device.type == "meta":
            return
        embeddings.position_embeddings.copy_(sinusoidal_table(embeddings.position_embeddings))
        self.decoder.decoder_pos_embed.copy_(sinusoidal_table(self.decoder.decoder_pos_embed))
        projection = embeddings.patch_embeddings.projection.weight  # (D, C, p, p), initialised like a Linear
        nn.init.xavier_uniform_(projection.view(projection.shape[0], -1))
        nn.init.normal_(embeddings.cls_token, std=self.config.initializer_range)
        nn.init.normal_(self.decoder.mask_token, std=self.config.initializer_range)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_backbone(self) -> ViTModel:
        """The encoder as a plain `ViTModel` (no pooler) whose modules ARE this model's: weights are
        shared, gradients reach MAE's encoder, and nothing is masked.

        MAE's `ViTMAEModel` masks inside its embeddings, so the plain view is assembled from its
        parts: patch projection, CLS token, the fixed sin-cos position table, blocks and final norm.
        It is built once and kept outside ``state_dict`` (the same tensors are already saved as
        ``vit.*``).
        """
        shared = self.__dict__.get("_shared_vit")
        if shared is None:
            shared = ViTModel(self.config.encoder_config(), add_pooling_layer=False)
            embeddings, source = shared.embeddings, self.vit.embeddings
            embeddings.patch_embeddings = source.patch_embeddings
            embeddings.cls_token = source.cls_token
            embeddings.position_embeddings = source.position_embeddings
            shared.layers = self.vit.layers
            shared.layernorm = self.vit.layernorm
            self.__dict__["_shared_vit"] = shared  # not a submodule: no duplicate weights in state_dict
        shared.train(self.training)
        return shared

    def load_backbone_weights(self, pretrained_backbone: nn.Module) -> None:
        """Start from a pre-trained plain ViT: its weights go into MAE's encoder (same names in 5.x).

        MAE's own fixed sin-cos position table is kept: MAE never learns positions.
        """
        target = ViTModel(self.config.encoder_config(), add_pooling_layer=False)
        copy_backbone_weights(target, pretrained_backbone)
        state = target.state_dict()
        state["embeddings.position_embeddings"] = self.vit.embeddings.position_embeddings.detach().clone()
        self.vit.load_state_dict(state, strict=True)


__all__ = ["MAEOutput", "ViTForMAE", "vit_mae_encoder_to_vit_state_dict"]
