"""DINO self-distillation with no labels, on any backbone hf-ssl can build.

DINO: Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
arXiv:2104.14294; follows facebookresearch/dino main_dino.py (``train_one_epoch``, ``DINOLoss``)
and utils.py (``MultiCropWrapper``). One training step::

    teacher_output = teacher(global crops)                  # (2B, K), no gradient
    student_output = student(global crops + local crops)    # ((2 + L)B, K)
    loss = dino_loss(student_output, teacher_output, center, teacher_temperature)
    center <- 0.9 center + 0.1 mean(teacher_output)         # all processes, training mode only

The recipe (recipe.py) schedules the teacher temperature, cancels the prototype
layer's gradients during the first epoch and moves the teacher towards the student by EMA after
every optimizer step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from hf_ssl.backbones import BackboneContractMixin, VisionBackbone, copy_backbone_weights
from hf_ssl.crops import crops_to_batch
from hf_ssl.heads import DINOHead
from hf_ssl.losses import centred_teacher_targets, crop_pair_cross_entropy, update_dino_center
from hf_ssl.monitoring import collapse_metrics

from .configuration_dino import DINOConfig


@dataclass
class DINOOutput(ModelOutput):
    """Outputs of [`BackboneForDINO`]; every field is a scalar the training loop logs.

    Args:
        loss: cross-entropy between the centred, sharpened teacher and the student, averaged over
            the (global crop, other crop) pairs.
        teacher_entropy: mean entropy of the teacher's centred, sharpened distribution, h(P_t)
            (the paper's figure 7: 0 = one-hot, the collapse that centring prevents; log K = uniform,
            the collapse that sharpening prevents).
        kl_divergence: ``loss - teacher_entropy`` = the mean KL(P_t || P_s); it stays above 0 while
            the student still has something to learn.
        embedding_std, embedding_rank: `hf_ssl.monitoring.collapse_metrics` of the student
            backbone's features of the global crops.
    """

    loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    kl_divergence: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None


class DINONetwork(nn.Module):
    """Backbone + DINO head, run like the official ``MultiCropWrapper``: the backbone once per
    resolution (all crops of one size in one batch), then the head once on all features.

    Args:
        config: the model's `DINOConfig`.
    """

    def __init__(self, config: DINOConfig):
        super().__init__()
        self.backbone = VisionBackbone(config.backbone_config)
        self._no_split_modules = self.backbone._no_split_modules  # post_init of the model reads its children's
        self.head = DINOHead(
            self.backbone.feature_dimension,
            output_dim=config.head_output_dim,
            hidden_dim=config.head_hidden_dim,
            bottleneck_dim=config.head_bottleneck_dim,
            num_layers=config.head_num_layers,
            batch_norm=config.use_batch_norm_in_head,
            norm_last_layer=config.norm_last_layer,
        )

    def forward(self, crops_by_resolution: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and prototype scores of crop batches of one size each.

        Args:
            crops_by_resolution: ``[(n_i * B, C, H_i, W_i), ...]``, crop-major (`crops_to_batch`).

        Returns:
            ``(features (sum n_i * B, D), outputs (sum n_i * B, K))`` in the order given.
        """
        features = torch.cat([self.backbone(crops) for crops in crops_by_resolution])  # (rows, D)
        return features, self.head(features)


class DINOPreTrainedModel(BackboneContractMixin, PreTrainedModel):
    config_class = DINOConfig
    base_model_prefix = "dino"
    main_input_name = "global_crops"
    input_modalities = ("image",)

    def _init_weights(self, module):
        """Leave the backbone's own initialisation (transformers / timm) and DINOHead's alone."""


class BackboneForDINO(DINOPreTrainedModel):
    """DINO pre-training: a student (backbone + DINO head) distilled from its EMA teacher.

    The teacher is a copy of the student made at construction (same weights, no gradients), kept as
    a submodule so that ``save_pretrained`` stores it; the centre of the teacher outputs is a
    buffer. `get_backbone` returns the student's plain backbone, what a run exports.

    Args:
        config: `DINOConfig` with a non-empty `backbone_config`.
    """

    def __init__(self, config: DINOConfig):
        super().__init__(config)
        if not config.backbone_config:
            raise ValueError("DINOConfig.backbone_config is empty: give the nested config of a backbone "
                             "(hf_ssl.resolve_backbone(name, image_size).nested())")
        self.student = DINONetwork(config)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, config.head_output_dim))
        self.post_init()

    def get_backbone(self) -> nn.Module:
        """The student's plain transformers / timm encoder (weights shared with this model)."""
        return self.student.backbone.model

    def load_backbone_weights(self, pretrained_backbone: nn.Module) -> None:
        """Start student AND teacher from a checkpoint's encoder (continued pre-training): a teacher
        left at its random initialisation would teach noise."""
        super().load_backbone_weights(pretrained_backbone)
        copy_backbone_weights(self.teacher.backbone.model, self.student.backbone.model)

    def _student_forward(self, global_batch: torch.Tensor, local_batch: torch.Tensor | None):
        """Student features of the global crops and outputs of all crops, one backbone call per size."""
        if local_batch is None:
            features, outputs = self.student([global_batch])
        elif local_batch.shape[-2:] == global_batch.shape[-2:]:  # one resolution: one batch, as the official wrapper
            features, outputs = self.student([torch.cat([global_batch, local_batch])])
        else:
            features, outputs = self.student([global_batch, local_batch])
        return features[: global_batch.shape[0]], outputs

    def _loss(self, student_output: torch.Tensor, teacher_output: torch.Tensor, teacher_temperature: float,
              num_global_crops: int) -> torch.Tensor:
        """`dino_loss`'s pair average, also without local crops (the official ``--local_crops_number 0``:
        two global crops teach each other)."""
        if student_output.shape[0] == teacher_output.shape[0] and num_global_crops < 2:
            raise ValueError("DINO needs at least two crops per image: give local_crops or a second global crop")
        targets = centred_teacher_targets(teacher_output, self.center, teacher_temperature)
        return crop_pair_cross_entropy(student_output, targets, num_global_crops, self.config.student_temperature)

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        teacher_temperature: float = 0.04,
    ) -> DINOOutput:
        """The DINO loss of a batch of multi-crop views (and, in training mode, the centre update).

        Args:
            global_crops: ``(B, num_global_crops, C, H, W)``, seen by teacher and student.
            local_crops: ``(B, L, C, h, w)`` smaller crops seen by the student only (optional).
            teacher_temperature: tau_t of this step (the recipe's schedule warms it up 0.04 -> 0.07;
                0.04, the official start value, when not given).
        """
        if global_crops.dim() != 5 or global_crops.shape[1] != self.config.num_global_crops:
            raise ValueError(
                f"global_crops must be (B, num_global_crops={self.config.num_global_crops}, C, H, W), "
                f"got {tuple(global_crops.shape)}"
            )
        if local_crops is not None and (local_crops.dim() != 5 or local_crops.shape[0] != global_crops.shape[0]):
            raise ValueError(f"local_crops must be (B={global_crops.shape[0]}, L, C, h, w), got {tuple(local_crops.shape)}")
        num_global_crops = global_crops.shape[1]
        global_batch = crops_to_batch(global_crops)  # (2B, C, H, W)
        local_batch = crops_to_batch(local_crops) if local_crops is not None and local_crops.shape[1] > 0 else None

        with torch.no_grad():
            _, teacher_output = self.teacher([global_batch])  # (2B, K)
        student_global_features, student_output = self._student_forward(global_batch, local_batch)
        loss = self._loss(student_output, teacher_output, teacher_temperature, num_global_crops)

        with torch.no_grad():
            centred = teacher_output.float() - self.center
            teacher_log_probabilities = F.log_softmax(centred / teacher_temperature, dim=-1)  # (2B, K)
            teacher_entropy = -(teacher_log_probabilities.exp() * teacher_log_probabilities).sum(dim=-1).mean()
            metrics = collapse_metrics(student_global_features.detach())
            if self.training:  # after the loss: this step's loss used the centre from before the step
                self.center.copy_(update_dino_center(self.center, teacher_output, self.config.center_momentum))
        return DINOOutput(
            loss=loss,
            teacher_entropy=teacher_entropy,
            kl_divergence=loss.detach() - teacher_entropy,
            embedding_std=metrics["embedding_std"],
            embedding_rank=metrics["embedding_rank"],
        )


__all__ = ["BackboneForDINO", "DINONetwork", "DINOOutput", "DINOPreTrainedModel", "crops_to_batch"]
