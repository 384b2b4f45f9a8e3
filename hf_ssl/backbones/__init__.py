"""Backbones: named presets, ``--model`` resolution (preset / transformers / timm), building any
backbone offline from a nested config, pooled features, and export to plain transformers / timm."""

from .contract import BackboneContractMixin
from .export import (
    default_image_processor,
    export_backbone_folder,
    export_vit_to_timm,
    segmentation_image_processor,
    vit_to_timm_state_dict,
)
from .modules import (
    VisionBackbone,
    backbone_features,
    build_backbone,
    copy_backbone_weights,
    feature_dimension,
    is_timm_module,
    load_pretrained_backbone,
    nested_backbone_config,
    pooled_features,
    spatial_features,
)
from .presets import (
    SMALL_IMAGE_SIZE,
    VIT_LAYER_NORM_EPS,
    available_presets,
    backbone_preset,
    is_preset,
    preset_config,
    swin_window_size,
    vit_patch_size,
)
from .spec import BackboneSpec, config_from_dict, resolve_backbone

__all__ = [
    "SMALL_IMAGE_SIZE",
    "VIT_LAYER_NORM_EPS",
    "BackboneContractMixin",
    "BackboneSpec",
    "VisionBackbone",
    "available_presets",
    "backbone_features",
    "backbone_preset",
    "build_backbone",
    "config_from_dict",
    "copy_backbone_weights",
    "default_image_processor",
    "export_backbone_folder",
    "export_vit_to_timm",
    "feature_dimension",
    "is_preset",
    "is_timm_module",
    "load_pretrained_backbone",
    "nested_backbone_config",
    "pooled_features",
    "spatial_features",
    "preset_config",
    "resolve_backbone",
    "segmentation_image_processor",
    "swin_window_size",
    "vit_patch_size",
    "vit_to_timm_state_dict",
]
