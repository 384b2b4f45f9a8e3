"""Configuration of `BackboneForSemanticSegmentation`: a backbone and a deconvolution decoder.

The decoder is the SplitMask paper's (El-Nouby et al. 2021, arXiv:2112.10740, section 4:
segmentation "by applying several deconvolution layers" on the encoder's outputs): transposed 3x3
convolutions of stride 2, each followed by BatchNorm and GELU, then a 1x1 classifier.
"""

from __future__ import annotations

from dataclasses import field

from transformers import PreTrainedConfig

from hf_ssl.config_checks import require, require_positive_ints

BACKBONE_SOURCES = ("transformers", "timm")
MAX_DECODER_LAYERS = 4


class SegmentationConfig(PreTrainedConfig):
    r"""Configuration of [`BackboneForSemanticSegmentation`].

    Args:
        backbone_config (`dict`): the backbone's nested config, ``{"source": "transformers" |
            "timm", ...}`` (`hf_ssl.backbones.nested_backbone_config`); the model rebuilds the
            backbone from it offline. Empty only for a config made without arguments.
        decoder_layers (`int`, defaults to 2): stride-2 transposed convolutions, 0 to 4; each doubles
            the feature map's side (`decoder_layers()` picks the count that brings it closest to
            the image).
        decoder_width (`int`, defaults to 128): channels of the decoder's layers.
        image_size (`int`, defaults to 224): side of the images the model was trained on.
        semantic_loss_ignore_index (`int`, defaults to 255): the mask value that marks unlabelled
            pixels (no loss, no score), transformers' name and the ADE20K / Pascal VOC convention.
        num_labels / id2label / label2id: the classes, background included (transformers' own fields).
    """

    model_type = "hf-ssl-segmentation"

    backbone_config: dict = field(default_factory=dict)
    decoder_layers: int = 2
    decoder_width: int = 128
    image_size: int = 224
    semantic_loss_ignore_index: int = 255

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        require(self, isinstance(self.backbone_config, dict), f"backbone_config must be a dict, got {type(self.backbone_config).__name__}")
        source = self.backbone_config.get("source", "transformers")
        require(self, source in BACKBONE_SOURCES, f"backbone_config['source'] must be one of {BACKBONE_SOURCES}, got {source!r}")
        require(self, isinstance(self.decoder_layers, int) and not isinstance(self.decoder_layers, bool)
                and 0 <= self.decoder_layers <= MAX_DECODER_LAYERS,
                f"decoder_layers must be an int from 0 to {MAX_DECODER_LAYERS}, got {self.decoder_layers!r}")
        require_positive_ints(self, ("decoder_width", "image_size"))


__all__ = ["MAX_DECODER_LAYERS", "SegmentationConfig"]
