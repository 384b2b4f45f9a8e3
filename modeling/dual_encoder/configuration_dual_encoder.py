"""Configuration of a CLIP-style image-text dual encoder trained with hf-ssl.

CLIP: Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", arXiv:2103.00020. SigLIP: Zhai et al. 2023, "Sigmoid Loss for Language Image
Pre-Training", arXiv:2303.15343. LiT: Zhai et al. 2022, "LiT: Zero-Shot Transfer with
Locked-image text Tuning", arXiv:2111.07991.

The fields mirror transformers' `VisionTextDualEncoderConfig` (``text_config``, ``projection_dim``,
``logit_scale_init_value``); the image tower is hf-ssl's nested backbone config (any transformers
or timm vision encoder, rebuilt offline), and the objective settings that change ``forward`` are
fields here: the loss, the logit-scale clamp, the SigLIP bias, the LiT lock.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from hf_ssl.config_checks import require, require_positive_ints

LOSS_TYPES = ("softmax", "sigmoid")
# CLIP initialises the temperature at 0.07 (t = log(1 / 0.07)) and clips exp(t) at 100;
# SigLIP initialises t' = log(10) and the bias b = -10 (paper, section 3.2).
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
SIGLIP_LOGIT_BIAS_INIT = -10.0
CLIP_MAX_LOGIT_SCALE = 100.0


class DualEncoderConfig(PreTrainedConfig):
    r"""Configuration of [`BackboneForDualEncoder`].

    Args:
        backbone_config (`dict`): the image tower, hf-ssl's nested backbone config
            (`hf_ssl.backbones.BackboneSpec.nested()`: a transformers config dict or a timm
            architecture), rebuilt offline by ``from_pretrained``.
        text_config (`PreTrainedConfig` or `dict`): the text tower's transformers config (default: BERT).
        projection_dim (`int`, defaults to 512): width of the joint embedding space (CLIP ViT-B: 512).
        loss_type (`str`, defaults to `"softmax"`): `"softmax"` (CLIP's symmetric cross-entropy over
            the global batch) or `"sigmoid"` (SigLIP's pairwise sigmoid loss with a learned bias;
            well defined at any batch size).
        logit_scale_init_value (`float`, *optional*): initial t, the logit scale being exp(t);
            default log(1 / 0.07) for softmax (CLIP), log(10) for sigmoid (SigLIP).
        logit_bias_init_value (`float`, *optional*): initial SigLIP bias b (default -10); sigmoid only.
        max_logit_scale (`float`, defaults to 100): exp(t) is clamped at this value (CLIP).
        lock_image_tower (`bool`, defaults to `False`): LiT's "locked image tower": the image
            encoder is frozen (no gradient, kept in eval mode) and, unless
            `unlock_image_projection`, so is its projection.
        unlock_image_projection (`bool`, defaults to `False`): with a locked tower, still train the
            image projection.
        gather_distributed (`bool`, defaults to `True`): negatives from every process (global batch).
        image_size (`int`, defaults to 224): input side of the image tower.
    """

    model_type = "hf-ssl-dual-encoder"
    sub_configs_defaults: ClassVar[dict] = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    backbone_config: dict = field(default_factory=dict)
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 512
    loss_type: str = "softmax"
    logit_scale_init_value: float | None = None
    logit_bias_init_value: float | None = None
    max_logit_scale: float = CLIP_MAX_LOGIT_SCALE
    lock_image_tower: bool = False
    unlock_image_projection: bool = False
    gather_distributed: bool = True
    image_size: int = 224

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.logit_scale_init_value is None:
            self.logit_scale_init_value = SIGLIP_LOGIT_SCALE_INIT if self.loss_type == "sigmoid" else CLIP_LOGIT_SCALE_INIT
        if self.logit_bias_init_value is None and self.loss_type == "sigmoid":
            self.logit_bias_init_value = SIGLIP_LOGIT_BIAS_INIT
        self.check_fields()

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        require(self, self.loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        require_positive_ints(self, ("projection_dim", "image_size"))
        require(self, self.max_logit_scale > 0, f"max_logit_scale must be > 0, got {self.max_logit_scale}")
        require(self, math.exp(self.logit_scale_init_value) <= self.max_logit_scale,
                f"exp(logit_scale_init_value) = {math.exp(self.logit_scale_init_value):.4g} exceeds max_logit_scale "
                f"({self.max_logit_scale})")
        require(self, self.loss_type == "sigmoid" or self.logit_bias_init_value is None,
                "logit_bias_init_value is for loss_type='sigmoid' only (CLIP's softmax has no bias)")
        require(self, not self.unlock_image_projection or self.lock_image_tower,
                "unlock_image_projection needs lock_image_tower (without a lock every parameter trains)")
        require(self, isinstance(self.backbone_config, dict), f"backbone_config must be a dict, got {type(self.backbone_config).__name__}")


__all__ = [
    "CLIP_LOGIT_SCALE_INIT",
    "CLIP_MAX_LOGIT_SCALE",
    "DualEncoderConfig",
    "LOSS_TYPES",
    "SIGLIP_LOGIT_BIAS_INIT",
    "SIGLIP_LOGIT_SCALE_INIT",
]
