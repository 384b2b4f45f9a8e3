"""Configuration of DINO self-distillation on any vision backbone.

DINO: Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
arXiv:2104.14294. Defaults are the flags of facebookresearch/dino ``main_dino.py`` (``--out_dim
65536``, ``--norm_last_layer True``, ``--use_bn_in_head False``) and of its ``DINOHead``
(vision_transformer.py: ``nlayers=3, hidden_dim=2048, bottleneck_dim=256``) and ``DINOLoss``
(``student_temp=0.1, center_momentum=0.9``, two global crops).
"""

from __future__ import annotations

from dataclasses import field

from transformers import PreTrainedConfig

from hf_ssl.config_checks import require, require_positive_ints

BACKBONE_SOURCES = ("transformers", "timm")
POSITIVE_INT_FIELDS = (
    "image_size", "head_output_dim", "head_hidden_dim", "head_bottleneck_dim", "head_num_layers", "num_global_crops"
)


class DINOConfig(PreTrainedConfig):
    r"""Configuration of [`BackboneForDINO`]: a backbone, the DINO head and the loss settings.

    Student and teacher share this configuration (same architecture); the teacher is an EMA of
    the student, whose momentum and temperature schedules belong to the training recipe.

    Args:
        backbone_config (`dict`): the backbone's nested config, ``{"source": "transformers" |
            "timm", ...}`` (`hf_ssl.backbones.BackboneSpec.nested()`); the model rebuilds the
            backbone from it offline. Empty only for a config made without arguments (transformers
            does so to read the defaults); a model needs it.
        image_size (`int`, defaults to 224): side of the global crops (the exported image processor's size).
        head_output_dim (`int`, defaults to 65536): K, the number of prototypes (``--out_dim``).
        head_hidden_dim (`int`, defaults to 2048): width of the head's hidden layers.
        head_bottleneck_dim (`int`, defaults to 256): size of the L2-normalised bottleneck.
        head_num_layers (`int`, defaults to 3): linear layers before the bottleneck.
        use_batch_norm_in_head (`bool`, defaults to `False`): BatchNorm after the hidden layers
            (``--use_bn_in_head``).
        norm_last_layer (`bool`, defaults to `True`): keep the prototype layer's weight-norm gain at
            1 (``--norm_last_layer``; the paper turns it off for ViT-S, keeps it for ViT-B).
        student_temperature (`float`, defaults to 0.1): tau_s of the student softmax.
        center_momentum (`float`, defaults to 0.9): EMA momentum of the teacher-output centre.
        num_global_crops (`int`, defaults to 2): crops seen by the teacher (and the student).
    """

    model_type = "hf-ssl-dino"

    backbone_config: dict = field(default_factory=dict)
    image_size: int = 224
    head_output_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_num_layers: int = 3
    use_batch_norm_in_head: bool = False
    norm_last_layer: bool = True
    student_temperature: float = 0.1
    center_momentum: float = 0.9
    num_global_crops: int = 2

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        require(self, isinstance(self.backbone_config, dict), f"backbone_config must be a dict, got {type(self.backbone_config).__name__}")
        source = self.backbone_config.get("source", "transformers")
        require(self, source in BACKBONE_SOURCES, f"backbone_config['source'] must be one of {BACKBONE_SOURCES}, got {source!r}")
        require_positive_ints(self, POSITIVE_INT_FIELDS)
        require(self, self.student_temperature > 0, f"student_temperature must be > 0, got {self.student_temperature}")
        require(self, 0.0 <= self.center_momentum <= 1.0, f"center_momentum must be in [0, 1], got {self.center_momentum}")


__all__ = ["DINOConfig"]
