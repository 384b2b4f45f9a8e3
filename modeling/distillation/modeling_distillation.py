"""Distillation of a frozen teacher into any student backbone (`BackboneForDistillation`).

Teacher and student see the same view. The student's pooled features, projected to the teacher's
width, learn the teacher's distribution over a queue of its earlier embeddings (global term); the
student's last feature map, resized to the teacher's grid, learns which patches the teacher finds
alike (dense term). See `DistillationConfig` and `hf_ssl.losses.distillation` for the formulas.

The teacher is attached, not owned (`attach_teacher`): it is no submodule, so it is never in the
state dict, a checkpoint or the exported folder, never receives gradients, stays in eval mode and
follows the inputs' device. A model loaded without its teacher takes the teacher's features as
inputs (``teacher_embeddings``, ``teacher_features``) or raises a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from hf_ssl.backbones.contract import BackboneContractMixin
from hf_ssl.backbones.modules import VisionBackbone, backbone_features, feature_dimension
from hf_ssl.distributed import gather_with_grad
from hf_ssl.losses import patch_similarity_distillation_loss, queue_distillation_loss
from hf_ssl.monitoring import collapse_metrics

from .configuration_distillation import DistillationConfig


@dataclass
class DistillationOutput(ModelOutput):
    """Output of [`BackboneForDistillation`].

    Args:
        loss: ``global_loss_weight * global_loss + dense_loss_weight * dense_loss``.
        global_loss: KL over the queue of teacher embeddings.
        dense_loss: KL between patch-similarity distributions (None when off or on a 1-cell map).
        embedding_std, embedding_rank: collapse monitors of the student's pooled features.
        student_embeddings: ``(B, D_t)`` the student's projected pooled features.
    """

    loss: torch.FloatTensor | None = None
    global_loss: torch.FloatTensor | None = None
    dense_loss: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None
    student_embeddings: torch.FloatTensor | None = None


class BackboneForDistillation(BackboneContractMixin, PreTrainedModel):
    """A student backbone + a linear projection to the teacher's width, and a queue of teacher embeddings.

    Attributes:
        student: `hf_ssl.backbones.VisionBackbone` (``student.model`` is what `export_backbone` writes).
        projection: ``nn.Linear(D_s, D_t)``.
        queue: ``(K, D_t)`` buffer of L2-normalised teacher embeddings, its first ``queue_length``
            rows filled, written in a ring at ``queue_position``.
    """

    config_class = DistillationConfig
    base_model_prefix = "distillation"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: DistillationConfig):
        super().__init__(config)
        if not config.backbone_config:
            raise ValueError("DistillationConfig.backbone_config is empty: build the config from the student's "
                             "backbone, e.g. hf_ssl.resolve_backbone('resnet-micro', 48).nested()")
        self.student = VisionBackbone(config.backbone_config)
        self.projection = nn.Linear(self.student.feature_dimension, config.teacher_hidden_size)
        self.register_buffer("queue", torch.zeros(config.queue_size, config.teacher_hidden_size))
        self.register_buffer("queue_length", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_position", torch.zeros((), dtype=torch.long))
        self.__dict__["teacher"] = None  # attached, not a submodule: outside the state dict
        # queue_length mirrored on the host, so that slicing the queue needs no device sync per step
        self.__dict__["filled_rows"] = None
        self.register_load_state_dict_post_hook(lambda module, keys: module.__dict__.update(filled_rows=None))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Keep every module's own initialisation (the backbone's, PyTorch's for the projection)."""

    def get_backbone(self) -> nn.Module:
        return self.student.model

    def attach_teacher(self, teacher: nn.Module) -> None:
        """Use `teacher` (a plain transformers / timm encoder, frozen here) for the targets."""
        width = feature_dimension(teacher)
        if width != self.config.teacher_hidden_size:
            raise ValueError(f"the teacher's features are {width}-d but this model projects to "
                             f"teacher_hidden_size={self.config.teacher_hidden_size}")
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher

    @torch.no_grad()
    def teacher_targets(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attached teacher's ``(B, D_t)`` pooled features and ``(B, h, w, D_t)`` map."""
        teacher = self.__dict__["teacher"]
        if teacher is None:
            raise RuntimeError("This model has no teacher: attach one with model.attach_teacher(encoder) or pass "
                               "teacher_embeddings and teacher_features to forward")
        if next(teacher.parameters()).device != pixel_values.device:
            teacher.to(pixel_values.device)
        return backbone_features(teacher, pixel_values)

    def forward(
        self,
        pixel_values: torch.Tensor,
        teacher_embeddings: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
    ) -> DistillationOutput:
        """Args:
        pixel_values: ``(B, C, H, W)``, the view both networks see.
        teacher_embeddings: ``(B, D_t)`` the teacher's pooled features of these images (computed
            with the attached teacher when omitted).
        teacher_features: ``(B, h, w, D_t)`` the teacher's last feature map (likewise).
        """
        if teacher_embeddings is None:
            teacher_embeddings, teacher_features = self.teacher_targets(pixel_values)
        config = self.config
        pooled, student_map = backbone_features(self.student.model, pixel_values)  # (B, D_s), (B, h_s, w_s, D_s)
        student_embeddings = self.projection(pooled)  # (B, D_t)
        targets = F.normalize(teacher_embeddings.detach().float(), dim=-1)
        batch_targets = gather_with_grad(targets)  # (W * B, D_t): every process's images of this step
        prototypes = torch.cat([batch_targets, self.queue[: self._filled_rows()]])  # and earlier images
        global_loss = queue_distillation_loss(student_embeddings, targets, prototypes, config.temperature)
        loss = config.global_loss_weight * global_loss
        dense_loss = None
        if config.dense_loss_weight > 0 and teacher_features is not None and teacher_features.shape[1:3].numel() > 1:
            grid = tuple(teacher_features.shape[1:3])
            resized = F.interpolate(student_map.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False)
            dense_loss = patch_similarity_distillation_loss(resized.flatten(2).transpose(1, 2),
                                                            teacher_features.flatten(1, 2), config.temperature)
            loss = loss + config.dense_loss_weight * dense_loss
        if self.training:
            self._enqueue(batch_targets)
        return DistillationOutput(loss=loss, global_loss=global_loss, dense_loss=dense_loss,
                                  **collapse_metrics(pooled.detach()), student_embeddings=student_embeddings)

    def _filled_rows(self) -> int:
        if self.__dict__["filled_rows"] is None:
            self.__dict__["filled_rows"] = int(self.queue_length)  # once after building or loading
        return self.__dict__["filled_rows"]

    @torch.no_grad()
    def _enqueue(self, embeddings: torch.Tensor) -> None:
        """Write ``(N, D_t)`` normalised teacher embeddings into the ring (the newest K when N > K)."""
        size = self.queue.shape[0]
        embeddings = embeddings[-size:].to(self.queue.dtype)
        positions = (self.queue_position + torch.arange(embeddings.shape[0], device=self.queue.device)) % size
        self.queue.index_copy_(0, positions, embeddings)
        self.queue_position.copy_((self.queue_position + embeddings.shape[0]) % size)
        self.__dict__["filled_rows"] = min(self._filled_rows() + embeddings.shape[0], size)
        self.queue_length.fill_(self.__dict__["filled_rows"])


__all__ = ["BackboneForDistillation", "DistillationOutput"]
