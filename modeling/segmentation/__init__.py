"""Semantic segmentation on any backbone: an encoder's last feature map, a deconvolution decoder,
per-pixel class logits (`BackboneForSemanticSegmentation`). Not a pre-training method: what
``hf-ssl finetune --task segmentation`` trains and exports; registered with
`AutoModelForSemanticSegmentation` so that ``pipeline("image-segmentation")`` runs it."""

from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

from hf_ssl.registry import register_models

from .configuration_segmentation import SegmentationConfig
from .modeling_segmentation import BackboneForSemanticSegmentation, decoder_layers

REGISTRATIONS = ((SegmentationConfig, BackboneForSemanticSegmentation, ("AutoModel", "AutoModelForSemanticSegmentation")),)
register_models(REGISTRATIONS)
# The image-segmentation pipeline checks a model's class name against this table of names, not
# against the registered classes, and logs an error for any other (it still runs the model).
MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(SegmentationConfig.model_type, BackboneForSemanticSegmentation.__name__)

__all__ = ["REGISTRATIONS", "BackboneForSemanticSegmentation", "SegmentationConfig", "decoder_layers"]
