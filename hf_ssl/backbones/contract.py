"""The backbone contract every hf-ssl pre-training model implements.

A method model subclasses `BackboneContractMixin` next to its `PreTrainedModel` base and defines
``get_backbone()``, which returns the plain encoder (a transformers `ViTModel`, `SwinModel`,
`ConvNextModel`, ... or a timm model). The mixin derives the rest with one signature for every
method:

- ``export_backbone(save_directory, image_processor=None) -> Path``: the encoder where plain
  transformers loads it (timm backbones in timm's format, which transformers also loads);
- ``export_timm(save_directory, image_processor=None) -> Path | None``: timm's format for ViT
  encoders, ``timm.create_model("local-dir:<folder>", pretrained=True)``; None when timm has no
  equivalent of the encoder;
- ``load_backbone_weights(module)``: start pre-training from a checkpoint's encoder weights;
- ``from_pretrained`` that loads safetensors only (`hf_ssl.safe_loading.SafeLoadingMixin`): a
  folder or repo with only pickle weights is refused, also through ``AutoModel``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import ViTImageProcessor

from hf_ssl.safe_loading import SafeLoadingMixin

from .export import default_image_processor, export_backbone_folder, export_vit_to_timm
from .modules import copy_backbone_weights, is_timm_module


class BackboneContractMixin(SafeLoadingMixin):
    """Export and initialisation of a method model's encoder, and safe loading (see the module docstring).

    Goes first in a model's bases, before `PreTrainedModel`."""

    def post_init(self):
        super().post_init()
        # `_no_split_modules` is FSDP's shard unit (accelerate's auto-wrap) and a device map's whole
        # unit. Kept: the repeated blocks present in this model. accelerate refuses an absent name (a
        # class may list both ViT's and BEiT's), and an embedding unit would never gather its weights:
        # methods call its pieces (patch projection, then their own token handling), not its forward.
        blocks = {type(child).__name__ for module in self.modules() if isinstance(module, (nn.ModuleList, nn.Sequential))
                  for child in module.children()}
        self._no_split_modules = {name for name in self._no_split_modules or () if name in blocks}

    def get_input_embeddings(self) -> None:
        """None: pre-training models have no token embedding to resize or tie. accelerate's FSDP
        preparation calls this, and transformers' default raises for models it cannot inspect; a
        patch embedding returned here would be sharded on its own, apart from its block's unit."""
        return None

    def _image_processor_or_default(self, image_processor: ViTImageProcessor | None) -> ViTImageProcessor:
        if image_processor is not None:
            return image_processor
        return default_image_processor(int(getattr(self.config, "image_size", 224)))

    def export_backbone(self, save_directory: str | Path, image_processor: ViTImageProcessor | None = None) -> Path:
        """Write the encoder (weights shared with this model at call time) as a plain checkpoint.

        Args:
            save_directory: output folder (created).
            image_processor: preprocessing to ship with it (default: resize to `config.image_size`,
                ImageNet mean/std).

        Returns:
            `save_directory` as a `Path`.
        """
        return export_backbone_folder(self.get_backbone(), save_directory, self._image_processor_or_default(image_processor))

    def export_timm(self, save_directory: str | Path, image_processor: ViTImageProcessor | None = None) -> Path | None:
        """Write the encoder in timm's format when timm has an equivalent (ViTs, timm backbones)."""
        backbone = self.get_backbone()
        processor = self._image_processor_or_default(image_processor)
        if is_timm_module(backbone):
            return export_backbone_folder(backbone, save_directory, processor)
        if getattr(backbone.config, "model_type", None) == "vit":
            return export_vit_to_timm(backbone, save_directory, processor)
        return None

    def load_backbone_weights(self, pretrained_backbone: nn.Module) -> None:
        """Copy a pre-trained encoder of the same architecture into this model's encoder."""
        copy_backbone_weights(self.get_backbone(), pretrained_backbone)


__all__ = ["BackboneContractMixin"]
