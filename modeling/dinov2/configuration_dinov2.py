"""Configuration of DINOv2 pre-training on a DINOv2-family encoder.

DINOv2: Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision",
arXiv:2304.07193. Defaults follow facebookresearch/dinov2 dinov2/configs/: the heads, loss
weights and masking of ``ssl_default_config.yaml`` (``dino.*``, ``ibot.*``), and the choices of
the released models' ``train/vitl14.yaml``: a separate iBOT head and Sinkhorn-Knopp centering
(the default file's are a shared head and softmax centering, both selectable here).
"""

from __future__ import annotations

from dataclasses import field

from transformers import PreTrainedConfig

from hf_ssl.config_checks import require, require_positive_ints

# transformers encoders that take ``bool_masked_pos`` and hold a mask token: what the iBOT term needs.
MASKABLE_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
CENTERINGS = ("sinkhorn_knopp", "centering")
POSITIVE_INT_FIELDS = (
    "image_size", "head_output_dim", "head_hidden_dim", "head_bottleneck_dim", "head_num_layers",
    "patch_head_output_dim", "patch_head_hidden_dim", "patch_head_bottleneck_dim", "patch_head_num_layers",
    "sinkhorn_iterations",
)


class DINOv2Config(PreTrainedConfig):
    r"""Configuration of [`BackboneForDINOv2`]: a DINOv2-family encoder, the two heads and the loss settings.

    Student and teacher share this configuration; the teacher is an EMA of the student, whose
    momentum and temperature schedules belong to the training recipe.

    Args:
        backbone_config (`dict`): the encoder's nested config (`hf_ssl.backbones.BackboneSpec.nested()`),
            a ``dinov2`` or ``dinov2_with_registers`` transformers model.
        image_size (`int`, defaults to 224): side of the global crops.
        head_output_dim (`int`, defaults to 65536): prototypes of the CLS (DINO) head (``dino.head_n_prototypes``).
        head_hidden_dim (`int`, defaults to 2048), head_bottleneck_dim (`int`, defaults to 256),
        head_num_layers (`int`, defaults to 3): the DINO head's MLP.
        patch_head_output_dim, patch_head_hidden_dim, patch_head_bottleneck_dim, patch_head_num_layers:
            the same for the iBOT patch head (``ibot.head_*``), used when `separate_patch_head`.
        separate_patch_head (`bool`, defaults to `True`): its own head for masked patches
            (``ibot.separate_head``; True in the released models' config, False in the default file).
        use_batch_norm_in_head (`bool`, defaults to `False`): BatchNorm in the heads' hidden layers.
        centering (`str`, defaults to `"sinkhorn_knopp"`): how teacher outputs become targets:
            ``"sinkhorn_knopp"`` (``train.centering`` of vitl14.yaml) or ``"centering"`` (DINO's
            running centre and softmax, the default file's).
        sinkhorn_iterations (`int`, defaults to 3): Sinkhorn-Knopp rounds.
        student_temperature (`float`, defaults to 0.1): tau_s of both student softmaxes.
        center_momentum (`float`, defaults to 0.9): EMA momentum of the centres (``"centering"`` only).
        dino_loss_weight (`float`, defaults to 1.0), patch_loss_weight (`float`, defaults to 1.0),
        koleo_loss_weight (`float`, defaults to 0.1): ``dino.loss_weight``, ``ibot.loss_weight``,
            ``dino.koleo_loss_weight``.
        mask_probability (`float`, defaults to 0.5): share of global crops that are masked
            (``ibot.mask_sample_probability``).
        mask_ratio_range (`list[float]`, defaults to `[0.1, 0.5]`): patches hidden per masked crop
            (``ibot.mask_ratio_min_max``).
        layerwise_decay (`float`, defaults to 0.9): learning-rate factor per encoder block below the
            top (``optim.layerwise_decay``), read by the recipe's parameter groups.
        patch_embed_lr_multiplier (`float`, defaults to 0.2): the patch embedding's extra factor
            (``optim.patch_embed_lr_mult``).
    """

    model_type = "hf-ssl-dinov2"

    backbone_config: dict = field(default_factory=dict)
    image_size: int = 224
    head_output_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_num_layers: int = 3
    patch_head_output_dim: int = 65536
    patch_head_hidden_dim: int = 2048
    patch_head_bottleneck_dim: int = 256
    patch_head_num_layers: int = 3
    separate_patch_head: bool = True
    use_batch_norm_in_head: bool = False
    centering: str = "sinkhorn_knopp"
    sinkhorn_iterations: int = 3
    student_temperature: float = 0.1
    center_momentum: float = 0.9
    dino_loss_weight: float = 1.0
    patch_loss_weight: float = 1.0
    koleo_loss_weight: float = 0.1
    mask_probability: float = 0.5
    mask_ratio_range: list = field(default_factory=lambda: [0.1, 0.5])
    layerwise_decay: float = 0.9
    patch_embed_lr_multiplier: float = 0.2

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        require(self, isinstance(self.backbone_config, dict), f"backbone_config must be a dict, got {type(self.backbone_config).__name__}")
        if self.backbone_config:
            model_type = self.backbone_config.get("model_type")
            require(self, self.backbone_config.get("source", "transformers") == "transformers" and model_type in MASKABLE_MODEL_TYPES,
                    f"the backbone must be a transformers {' or '.join(MASKABLE_MODEL_TYPES)} model (the iBOT term "
                    f"replaces masked patches by its mask token), got {model_type!r}")
        require_positive_ints(self, POSITIVE_INT_FIELDS)
        require(self, self.centering in CENTERINGS, f"centering must be one of {CENTERINGS}, got {self.centering!r}")
        require(self, self.student_temperature > 0, f"student_temperature must be > 0, got {self.student_temperature}")
        require(self, 0.0 <= self.center_momentum <= 1.0, f"center_momentum must be in [0, 1], got {self.center_momentum}")
        for name in ("dino_loss_weight", "patch_loss_weight", "koleo_loss_weight"):
            require(self, getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        require(self, 0.0 <= self.mask_probability <= 1.0, f"mask_probability must be in [0, 1], got {self.mask_probability}")
        require(self, 0 < self.layerwise_decay <= 1, f"layerwise_decay must be in (0, 1], got {self.layerwise_decay}")
        require(self, self.patch_embed_lr_multiplier > 0, f"patch_embed_lr_multiplier must be > 0, got {self.patch_embed_lr_multiplier}")
        ratio = list(self.mask_ratio_range)
        require(self, len(ratio) == 2 and 0.0 <= ratio[0] <= ratio[1] <= 1.0,
                f"mask_ratio_range must be [min, max] with 0 <= min <= max <= 1, got {ratio}")


__all__ = ["DINOv2Config"]
