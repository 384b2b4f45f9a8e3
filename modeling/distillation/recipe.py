"""Distillation recipe (``--method distillation --teacher <encoder>``) on any student backbone.

Where every default comes from:

- Design: Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and consistent"
  (arXiv:2106.05237): the teacher and the student see the same view of each image ("consistent")
  and the student matches the teacher's distributions with a KL divergence. Without labels the
  teacher's embeddings of earlier images, in a queue, take the place of its classifier (the
  pseudo-classifier LightlyTrain's documentation describes for its distillation method); the dense
  term, matching each image's patch-to-patch similarities, is hf-ssl's (`DistillationConfig`).
- Temperature 0.07 for both terms; the queue holds 4,096 teacher embeddings, at most half of the
  training images (counted before training, up to ``--preparation_rows``) so that it never holds
  one image twice: hf-ssl's settings.
- View: one "light" view (random resized crop and flip, `hf_ssl.transforms`), shared by teacher and
  student; the teacher gets the student's normalised pixels (ImageNet statistics by default, as
  DINOv2 and most checkpoints expect).
- Optimizer: AdamW with MoCo v3's published ViT settings (`MOCO_V3_VIT_ADAMW`), as the
  joint-embedding methods; the paper's "patient" half is the budget: distillation keeps improving
  with far longer schedules than supervised training.
- The teacher runs in eval mode without gradients, in the run's precision (bf16 where the host has
  it natively), and is never saved: a checkpoint holds the student, the projection and the queue,
  and the teacher is loaded again from ``--teacher`` on resume (config.json names it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_ssl.backbones import BackboneSpec, build_backbone, feature_dimension, load_pretrained_backbone, resolve_backbone
from hf_ssl.recipes.base import BuildContext, MethodCard, Recipe, register_recipe
from hf_ssl.recipes.joint_embedding import MOCO_V3_VIT_ADAMW

from . import BackboneForDistillation, DistillationConfig

DEFAULT_QUEUE_SIZE = 4096


@dataclass
class DistillationArguments:
    """Flags of ``--method distillation``."""

    teacher: str | None = field(
        default=None,
        metadata={"help": "The frozen teacher: a transformers or timm folder, an hf-ssl run folder, a Hub id (from the "
                          "local cache when offline) or timm/<name>; its weights are required."},
    )
    queue_size: int | None = field(
        default=None,
        metadata={"help": f"Teacher embeddings kept as the pseudo-classifier (default: {DEFAULT_QUEUE_SIZE}, at most half "
                          "of the training images)."},
    )


def resolve_teacher(reference: str, image_size: int) -> BackboneSpec:
    """The teacher's backbone spec; a hf-ssl run folder gives its exported ``backbone/``."""
    folder = Path(reference)
    if folder.is_dir() and (folder / "backbone" / "config.json").is_file():
        reference = str(folder / "backbone")
    spec = resolve_backbone(reference, image_size)
    if spec.weights is None:
        raise ValueError(f"--teacher {reference}: a teacher needs trained weights (a folder or Hub id with "
                         "model.safetensors, or an hf-ssl run folder), not a preset or a bare architecture")
    return spec


def queue_size_for(training_images: int | None, requested: int | None) -> int:
    """``--queue_size``, or the default capped at half of the training images (when counted)."""
    if requested is not None:
        if requested <= 0:
            raise ValueError(f"--queue_size must be > 0, got {requested}")
        return requested
    if training_images is None:
        return DEFAULT_QUEUE_SIZE
    return max(1, min(DEFAULT_QUEUE_SIZE, training_images // 2))


class DistillationRecipe(Recipe):
    name = "distillation"
    description = "Distil a frozen teacher into any student: KL over a queue of teacher embeddings + patch-similarity KL"
    registrations = ((DistillationConfig, BackboneForDistillation, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="Distillation",
        description=(
            "Distillation of a frozen teacher into this model, without labels (after Beyer et al. 2022, "
            "arXiv:2106.05237): on the same view of each image, the student's projected features learn the "
            "teacher's distribution over a queue of its embeddings of earlier images, and the student's feature "
            "map learns which patches the teacher finds alike. config.json names the teacher."
        ),
        limitation="The student can only be as good as the teacher on these images, and inherits its biases.",
        tags=("distillation", "knowledge-distillation"),
    )
    arguments_class = DistillationArguments
    optimizer = MOCO_V3_VIT_ADAMW
    supported_backbones = ("any",)
    prepares_inputs = True

    def _arguments(self, context: BuildContext) -> DistillationArguments:
        return context.method_arguments if context.method_arguments is not None else self.method_arguments_defaults()

    def prepare_inputs(self, context: BuildContext, rows) -> None:
        """Count the training images (up to ``--preparation_rows``) to size the queue."""
        context.artifacts["training_images"] = sum(1 for _ in rows)

    def describe_views(self, context: BuildContext) -> str:
        return f"1 view of {context.image_size} px, the same for the teacher ({self._arguments(context).teacher})"

    def build_model(self, context: BuildContext):
        arguments = self._arguments(context)
        if not arguments.teacher:
            raise ValueError("--method distillation needs --teacher: the encoder to distil (a folder, an hf-ssl run "
                             "folder, a Hub id or timm/<name>)")
        spec = resolve_teacher(arguments.teacher, context.image_size)
        on_meta = torch.empty(0).device.type == "meta"  # the run's dry build checks shapes only: no weights
        teacher = build_backbone(spec.nested()) if on_meta else load_pretrained_backbone(spec.nested(), spec.weights)
        fields = dict(backbone_config=context.backbone.nested(), image_size=context.image_size, teacher=arguments.teacher,
                      teacher_hidden_size=feature_dimension(teacher),
                      queue_size=queue_size_for(context.artifacts.get("training_images"), arguments.queue_size))
        fields.update(context.model_overrides)
        model = BackboneForDistillation(DistillationConfig(**fields))
        if not on_meta:
            model.attach_teacher(teacher)
        return model


DISTILLATION = register_recipe(DistillationRecipe())

__all__ = ["DISTILLATION", "DistillationArguments", "DistillationRecipe", "queue_size_for", "resolve_teacher"]
