"""Configuration of distilling a frozen teacher's features into any student backbone.

The design follows Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and
consistent" (arXiv:2106.05237): teacher and student see the same view of each image, and the
student learns the teacher's distributions. Without labels there is no classifier to take those
distributions from, so the teacher's own embeddings of earlier images (a queue) stand in for its
weights (`hf_ssl.losses.queue_distillation_loss`); a dense term matches which patches resemble
which (`hf_ssl.losses.patch_similarity_distillation_loss`).
"""

from __future__ import annotations

from dataclasses import field

from transformers import PreTrainedConfig

from hf_ssl.config_checks import require, require_positive_ints


class DistillationConfig(PreTrainedConfig):
    r"""Configuration of [`BackboneForDistillation`].

    Args:
        backbone_config (`dict`): the student backbone's nested config
            (`hf_ssl.backbones.BackboneSpec.nested()`), from which the model rebuilds it offline.
        image_size (`int`, defaults to 224): input side the model was built for.
        teacher (`str`, *optional*): where the teacher came from (a folder, a Hub id, a hf-ssl run
            folder or ``timm/<name>``), for the model card and for re-attaching it on resume; its
            weights are never part of this model.
        teacher_hidden_size (`int`, defaults to 768): D_t, the width of the teacher's pooled
            features; the student's are projected to it.
        queue_size (`int`, defaults to 4096): K, teacher embeddings of earlier images kept as the
            pseudo-classifier (the recipe sizes it from the dataset: at most half of it).
        temperature (`float`, defaults to 0.07): tau of both terms.
        global_loss_weight (`float`, defaults to 1.0): weight of the queue term.
        dense_loss_weight (`float`, defaults to 1.0): weight of the patch-similarity term (0: off;
            it is skipped when the teacher's map has a single cell).
    """

    model_type = "hf-ssl-distillation"

    backbone_config: dict = field(default_factory=dict)
    image_size: int = 224
    teacher: str | None = None
    teacher_hidden_size: int = 768
    queue_size: int = 4096
    temperature: float = 0.07
    global_loss_weight: float = 1.0
    dense_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        require(self, isinstance(self.backbone_config, dict), f"backbone_config must be a dict, got {type(self.backbone_config).__name__}")
        require_positive_ints(self, ("image_size", "teacher_hidden_size", "queue_size"))
        require(self, self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        for name in ("global_loss_weight", "dense_loss_weight"):
            require(self, getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        require(self, self.global_loss_weight + self.dense_loss_weight > 0, "global_loss_weight or dense_loss_weight must be > 0")


__all__ = ["DistillationConfig"]
