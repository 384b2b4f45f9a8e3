"""DINOv2 pre-training: DINO's CLS self-distillation, iBOT's masked-patch self-distillation and the
KoLeo regulariser, one student and its EMA teacher on a DINOv2-family encoder.

DINOv2: Oquab et al. 2023, arXiv:2304.07193; follows facebookresearch/dinov2
dinov2/train/ssl_meta_arch.py (``SSLMetaArch.forward_backward``). One training step::

    masks = dinov2_masks(2B global crops)                                   # half of them masked
    teacher: CLS and patch tokens of the unmasked global crops              # no gradient
        cls targets   = centre(dino_head(cls))                              # Sinkhorn-Knopp or softmax centring
        patch targets = centre(patch_head(patch tokens at the masked positions))
    student: the global crops with masked patches replaced by the mask token, the local crops
    loss = crop_pair_cross_entropy(dino_head(student CLS of every crop), cls targets)
         + masked_patch_loss(patch_head(student patch tokens at the masked positions), patch targets)
         + 0.1 * sum over the 2 global crops of koleo_loss(student CLS tokens of that crop)

The official loss divides the pair sum by ``2 + max(2 L, 1)`` for L local crops: the pair mean
whenever there are local crops; with none it divides 2 pairs by 3, here by 2 (a constant factor).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from hf_ssl.backbones import BackboneContractMixin, VisionBackbone, copy_backbone_weights
from hf_ssl.crops import crops_to_batch
from hf_ssl.heads import DINOHead
from hf_ssl.losses import (
    centred_teacher_targets,
    crop_pair_cross_entropy,
    koleo_loss,
    masked_patch_loss,
    masked_patch_weights,
    sinkhorn_knopp_targets,
    update_dino_center,
)
from hf_ssl.masking import dinov2_masks
from hf_ssl.monitoring import collapse_metrics

from .configuration_dinov2 import DINOv2Config


@dataclass
class DINOv2Output(ModelOutput):
    """Outputs of [`BackboneForDINOv2`]; every field is a scalar the training loop logs.

    Args:
        loss: ``dino_loss_weight * dino_loss + patch_loss_weight * patch_loss + koleo_loss_weight * koleo_loss``.
        dino_loss: the CLS term, cross-entropy over (teacher global crop, other student crop) pairs.
        patch_loss: the iBOT term over the masked patches of the global crops.
        koleo_loss: the KoLeo term, summed over the global crops (unweighted).
        teacher_entropy: mean entropy of the teacher's CLS targets (0: one-hot; log K: uniform).
        masked_fraction: share of the global crops' patches that were masked.
        embedding_std, embedding_rank: `hf_ssl.monitoring.collapse_metrics` of the student's CLS
            tokens of the global crops.
    """

    loss: torch.FloatTensor | None = None
    dino_loss: torch.FloatTensor | None = None
    patch_loss: torch.FloatTensor | None = None
    koleo_loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    masked_fraction: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None


def _head(config: DINOv2Config, input_dim: int, prefix: str) -> DINOHead:
    return DINOHead(
        input_dim,
        output_dim=getattr(config, f"{prefix}_output_dim"),
        hidden_dim=getattr(config, f"{prefix}_hidden_dim"),
        bottleneck_dim=getattr(config, f"{prefix}_bottleneck_dim"),
        num_layers=getattr(config, f"{prefix}_num_layers"),
        batch_norm=config.use_batch_norm_in_head,
    )


class DINOv2Network(nn.Module):
    """A DINOv2 encoder with the CLS (DINO) head and, when separate, the patch (iBOT) head.

    Args:
        config: the model's `DINOv2Config`.
    """

    def __init__(self, config: DINOv2Config):
        super().__init__()
        self.backbone = VisionBackbone(config.backbone_config)
        self._no_split_modules = self.backbone._no_split_modules  # post_init of the model reads its children's
        self.num_prefix_tokens = 1 + int(config.backbone_config.get("num_register_tokens", 0))
        self.dino_head = _head(config, self.backbone.feature_dimension, "head")
        self.patch_head = _head(config, self.backbone.feature_dimension, "patch_head") if config.separate_patch_head else None

    def patch_logits(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """``(M, D) -> (M, K)``: the patch head, or the DINO head when it is shared."""
        return (self.patch_head or self.dino_head)(patch_tokens)

    def encode(self, pixel_values: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W) -> ((B, D) CLS tokens, (B, N, D) patch tokens)``, both after the final norm.

        Args:
            masks: ``(B, N)`` bool; True patches enter the encoder as its mask token.
        """
        hidden = self.backbone.model(pixel_values=pixel_values, bool_masked_pos=masks).last_hidden_state
        return hidden[:, 0], hidden[:, self.num_prefix_tokens:]


class DINOv2PreTrainedModel(BackboneContractMixin, PreTrainedModel):
    config_class = DINOv2Config
    base_model_prefix = "dinov2"
    main_input_name = "global_crops"
    input_modalities = ("image",)

    def _init_weights(self, module):
        """Leave the encoder's own initialisation (transformers) and DINOHead's alone."""


class BackboneForDINOv2(DINOv2PreTrainedModel):
    """DINOv2 pre-training: a student (encoder + heads) distilled from its EMA teacher.

    The teacher is a copy of the student made at construction, or of pre-trained weights loaded
    into the student afterwards (`load_backbone_weights` copies them into both: a continued run
    starts with teacher = student = the checkpoint). The centres are buffers, used by
    ``centering="centering"`` only.

    Args:
        config: `DINOv2Config` with a non-empty `backbone_config`.
    """

    def __init__(self, config: DINOv2Config):
        super().__init__(config)
        if not config.backbone_config:
            raise ValueError("DINOv2Config.backbone_config is empty: give the nested config of a DINOv2 encoder "
                             "(hf_ssl.resolve_backbone('dinov2-small', 224).nested())")
        self.student = DINOv2Network(config)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, config.head_output_dim))
        patch_dim = config.patch_head_output_dim if config.separate_patch_head else config.head_output_dim
        self.register_buffer("patch_center", torch.zeros(1, patch_dim))
        self.post_init()

    def get_backbone(self) -> nn.Module:
        """The student's plain transformers encoder (weights shared with this model)."""
        return self.student.backbone.model

    def load_backbone_weights(self, pretrained_backbone: nn.Module) -> None:
        """Start student AND teacher from the same weights (continued pre-training)."""
        super().load_backbone_weights(pretrained_backbone)
        copy_backbone_weights(self.teacher.backbone.model, self.student.backbone.model)

    def _targets(self, logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
        """Teacher logits ``(rows, K)`` -> target distributions, by the configured centering."""
        if self.config.centering == "sinkhorn_knopp":
            return sinkhorn_knopp_targets(logits, temperature, self.config.sinkhorn_iterations)
        return centred_teacher_targets(logits, center, temperature)

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        teacher_temperature: float = 0.04,
    ) -> DINOv2Output:
        """The DINOv2 loss of a batch of multi-crop views (and, in training mode with softmax
        centering, the centre updates). The iBOT masks are drawn here from torch's RNG.

        Args:
            global_crops: ``(B, 2, C, H, W)``, seen by teacher and student.
            local_crops: ``(B, L, C, h, w)`` seen by the student only (optional).
            teacher_temperature: tau_t of this step (the recipe warms it up 0.04 -> 0.07).
        """
        if global_crops.dim() != 5 or global_crops.shape[1] != 2:
            raise ValueError(f"global_crops must be (B, 2, C, H, W), got {tuple(global_crops.shape)}")
        if local_crops is not None and (local_crops.dim() != 5 or local_crops.shape[0] != global_crops.shape[0]):
            raise ValueError(f"local_crops must be (B={global_crops.shape[0]}, L, C, h, w), got {tuple(local_crops.shape)}")
        config = self.config
        global_batch = crops_to_batch(global_crops)  # (2B, C, H, W)
        local_batch = crops_to_batch(local_crops) if local_crops is not None and local_crops.shape[1] > 0 else None

        with torch.no_grad():
            teacher_cls, teacher_patches = self.teacher.encode(global_batch)  # (2B, D), (2B, N, D)
        patch_size = config.backbone_config["patch_size"]
        grid_size = (global_batch.shape[-2] // patch_size, global_batch.shape[-1] // patch_size)
        masks = dinov2_masks(global_batch.shape[0], grid_size, config.mask_probability,
                             tuple(config.mask_ratio_range)).to(global_batch.device)  # (2B, N)
        with torch.no_grad():
            teacher_cls_logits = self.teacher.dino_head(teacher_cls)  # (2B, K)
            teacher_patch_logits = self.teacher.patch_logits(teacher_patches[masks])  # (M, K')
            cls_targets = self._targets(teacher_cls_logits, self.center, teacher_temperature)
            patch_targets = self._targets(teacher_patch_logits, self.patch_center, teacher_temperature)

        student_cls, student_patches = self.student.encode(global_batch, masks)
        student_tokens = student_cls
        if local_batch is not None:
            student_tokens = torch.cat([student_cls, self.student.encode(local_batch)[0]])
        dino_loss = crop_pair_cross_entropy(self.student.dino_head(student_tokens), cls_targets, 2,
                                            config.student_temperature)
        patch_loss = masked_patch_loss(self.student.patch_logits(student_patches[masks]), patch_targets,
                                       masked_patch_weights(masks), global_batch.shape[0], config.student_temperature)
        koleo = sum(koleo_loss(crop) for crop in student_cls.chunk(2))
        loss = config.dino_loss_weight * dino_loss + config.patch_loss_weight * patch_loss + config.koleo_loss_weight * koleo

        with torch.no_grad():
            teacher_entropy = -(cls_targets * cls_targets.clamp_min(1e-30).log()).sum(-1).mean()
            metrics = collapse_metrics(student_cls.detach())
            if self.training and config.centering == "centering":  # after the loss, as the official code
                self.center.copy_(update_dino_center(self.center, teacher_cls_logits, config.center_momentum))
                self.patch_center.copy_(update_dino_center(self.patch_center, teacher_patch_logits, config.center_momentum))
        return DINOv2Output(
            loss=loss,
            dino_loss=dino_loss.detach(),
            patch_loss=patch_loss.detach(),
            koleo_loss=koleo.detach(),
            teacher_entropy=teacher_entropy,
            masked_fraction=masks.float().mean(),
            embedding_std=metrics["embedding_std"],
            embedding_rank=metrics["embedding_rank"],
        )


__all__ = ["BackboneForDINOv2", "DINOv2Network", "DINOv2Output", "DINOv2PreTrainedModel"]
