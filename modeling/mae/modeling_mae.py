"""MAE pre-training: transformers' `ViTMAEForPreTraining` plus hf-ssl's backbone contract.

MAE: He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377.
Nothing of the method is re-implemented: masking (per-sample shuffle, 75 % hidden), the encoder
on visible patches, the light decoder and the normalised-pixel MSE are transformers' code. This
subclass adds `get_backbone` / `export_backbone`, which turn the `ViTMAEModel` encoder into a
plain `ViTModel` (learned-position-embedding slot filled with MAE's fixed sin-cos table).
"""

from __future__ import annotations

import os

import torch
from transformers import ViTMAEForPreTraining, ViTModel
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from ..simmim.modeling_simmim import save_plain_encoder
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


class MAEForPreTraining(ViTMAEForPreTraining):
    """transformers' `ViTMAEForPreTraining` with hf-ssl's `get_backbone` / `export_backbone`.

    `forward(pixel_values, noise=None, ...)` is transformers' own: it returns
    `ViTMAEForPreTrainingOutput(loss, logits (B, N, p*p*C), mask (B, N), ids_restore, ...)`.
    """

    config: MAEConfig
    config_class = MAEConfig

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self._initialize_position_tables()

    @torch.no_grad()
    def _initialize_position_tables(self) -> None:
        """Give a freshly built model MAE's init, which transformers 5.23 skips when built from a config.

        In `ViTMAEForPreTraining(config)` both fixed sin-cos tables stay all zeros (and frozen, so
        the model never learns positions): the inner `ViTMAEModel` initialises itself first and
        `ViTMAEEmbeddings.initialize_weights` returns early because its patch projection is already
        flagged as initialised; the decoder's table is zeroed after the decoder filled it. Loading
        with `from_pretrained` overwrites all of this with the checkpoint's values.
        """
        embeddings = self.vit.embeddings
        if embeddings.position_embeddings.device.type == "meta":
            return
        embeddings.position_embeddings.copy_(sinusoidal_table(embeddings.position_embeddings))
        projection = embeddings.patch_embeddings.projection.weight  # (D, C, p, p), initialised like a Linear
        torch.nn.init.xavier_uniform_(projection.view(projection.shape[0], -1))
        torch.nn.init.normal_(embeddings.cls_token, std=self.config.initializer_range)
        self.decoder.decoder_pos_embed.copy_(sinusoidal_table(self.decoder.decoder_pos_embed))
        torch.nn.init.normal_(self.decoder.mask_token, std=self.config.initializer_range)

    def get_backbone(self) -> ViTModel:
        """A plain `ViTModel` (no pooler) holding a *copy* of the current encoder weights.

        Unlike SimMIM's, this is a snapshot: MAE's encoder class (`ViTMAEModel`) masks inside its
        embeddings, so the plain encoder is a different module; call again after more training.
        """
        encoder = ViTModel(self.config.encoder_config(), add_pooling_layer=False)
        state = vit_mae_encoder_to_vit_state_dict(self.vit.state_dict(), encoder.state_dict())
        encoder.load_state_dict(state, strict=True)
        parameter = next(self.parameters())
        return encoder.to(device=parameter.device, dtype=parameter.dtype).eval()

    def export_backbone(
        self,
        save_directory: str | os.PathLike,
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
    ) -> str:
        """Write the encoder as a plain `ViTModel` checkpoint + `ViTImageProcessor` config.

        Args:
            save_directory: output folder (created).
            image_mean, image_std: normalisation used in training (ImageNet's by default).
        """
        return save_plain_encoder(self.get_backbone(), save_directory, self.config.image_size, image_mean, image_std)


__all__ = ["MAEForPreTraining", "vit_mae_encoder_to_vit_state_dict"]
