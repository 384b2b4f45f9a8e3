"""Build any backbone from its nested config, and read its features: one vector per image
(`pooled_features`), its last feature map (`spatial_features`) or both (`backbone_features`).

`build_backbone(nested_config)` returns the ecosystem's own module (a transformers `ViTModel`,
`ConvNextModel`, ... or a timm model), randomly initialised and without downloading anything, so
that a method model rebuilds its backbone inside ``from_pretrained`` offline. `VisionBackbone`
wraps it for the joint-embedding methods: ``(B, C, H, W) -> (B, D)`` pooled features, crops of
any size for ViTs (position embeddings interpolated), and the plain module for export.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .spec import config_from_dict

# transformers encoders whose first token is a CLS token that the final norm covers: their pooled
# feature is that token (DINO, MoCo v3 and the ViT papers use it); the others use `pooler_output`.
CLS_TOKEN_MODEL_TYPES = ("vit", "deit", "vit_mae", "beit", "data2vec-vision")


def is_timm_module(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.")


def build_backbone(nested_config: dict) -> nn.Module:
    """A randomly initialised backbone from ``{"source": ..., ...}`` (see `hf_ssl.backbones.spec`).

    transformers ViT-family models are built without their pooler (it is not part of any
    self-supervised objective and would hold parameters that never get a gradient).
    """
    source = nested_config.get("source", "transformers")
    if source == "timm":
        import timm

        model_args = dict(nested_config.get("model_args") or {})
        module = timm.create_model(nested_config["architecture"], pretrained=False, num_classes=0, **model_args)
        module.hf_ssl_model_args = model_args  # timm keeps no record of them; the timm export needs them
        return module
    config = config_from_dict(nested_config)
    model_class = MODEL_MAPPING[type(config)]
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters else {}
    return model_class(config, **kwargs)


def nested_backbone_config(module: nn.Module) -> dict:
    """The nested config `build_backbone` rebuilds `module`'s architecture from: ``{"source":
    "transformers", **config.to_dict()}`` or ``{"source": "timm", "architecture", "model_args"}``."""
    if is_timm_module(module):
        architecture = module.pretrained_cfg.get("architecture") or type(module).__name__
        return {"source": "timm", "architecture": architecture,
                "model_args": dict(getattr(module, "hf_ssl_model_args", {}) or {})}
    return {"source": "transformers", **module.config.to_dict()}


def load_pretrained_backbone(nested_config: dict, weights: str) -> nn.Module:
    """The backbone with the weights of `weights` (a folder or cached Hub id), safetensors only."""
    if nested_config.get("source") == "timm":
        import timm

        location = f"local-dir:{weights}" if Path(weights).is_dir() else f"hf-hub:{weights}"
        model_args = dict(nested_config.get("model_args") or {})
        module = timm.create_model(location, pretrained=True, num_classes=0, **model_args)
        module.hf_ssl_model_args = model_args
        return module
    config = config_from_dict(nested_config)
    model_class = MODEL_MAPPING[type(config)]
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters else {}
    return model_class.from_pretrained(weights, config=config, use_safetensors=True, **kwargs)


def feature_dimension(module: nn.Module) -> int:
    """D of the pooled features of a backbone (timm, `TimmWrapperModel` or a transformers encoder)."""
    if is_timm_module(module):
        return int(module.num_features)
    if hasattr(module, "timm_model"):  # transformers' TimmWrapperModel
        return int(module.timm_model.num_features)
    config = module.config
    if hasattr(config, "hidden_sizes") and config.hidden_sizes:  # ConvNeXt, ResNet: last stage
        return int(config.hidden_sizes[-1])
    if hasattr(config, "depths") and hasattr(config, "embed_dim"):  # Swin: last stage
        return int(config.embed_dim * 2 ** (len(config.depths) - 1))
    return int(config.hidden_size)


def pooled_features(module: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, D)``: CLS token for ViT-family encoders, the model's pooling otherwise.

    ViTs accept crops of other sizes than their config's (multi-crop): transformers' position
    embeddings are interpolated, timm ViTs need ``model_args={"dynamic_img_size": True}``.
    """
    if is_timm_module(module):
        return module(pixel_values)  # num_classes=0: timm returns pooled, pre-logits features
    return _forward_and_pool(module, pixel_values)[1]


def backbone_features(module: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, H, W) -> ((B, D), (B, h, w, D))``: the pooled features (as `pooled_features`) and the
    last feature map, channels last, from one forward pass.

    ViT-family encoders give their patch tokens on the patch grid (whatever precedes them, CLS,
    a distillation token or register tokens, is dropped: the tokens beyond the grid's count); conv
    nets and Swin give their last stage.
    """
    height, width = pixel_values.shape[-2:]
    timm_model = module if is_timm_module(module) else getattr(module, "timm_model", None)
    if timm_model is not None:
        features = timm_model.forward_features(pixel_values)
        pooled = timm_model.forward_head(features, pre_logits=True)
        if features.dim() == 4:  # (B, D, h, w), or (B, h, w, D) for the models that say NHWC (Swin)
            nhwc = getattr(timm_model, "output_fmt", "NCHW") == "NHWC"
            return pooled, features if nhwc else features.permute(0, 2, 3, 1)
        patch = getattr(getattr(timm_model, "patch_embed", None), "patch_size", None)
        grid = (height // patch[0], width // patch[1]) if patch else None
        return pooled, _tokens_to_map(features, grid, height, width)
    outputs, pooled = _forward_and_pool(module, pixel_values)
    hidden = outputs.last_hidden_state
    if hidden.dim() == 4:  # ConvNeXt, ResNet: (B, D, h, w)
        return pooled, hidden.permute(0, 2, 3, 1)
    patch = getattr(module.config, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        patch = patch[0]
    grid = (height // patch, width // patch) if patch and "depths" not in module.config.to_dict() else None
    return pooled, _tokens_to_map(hidden, grid, height, width)


def spatial_features(module: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, h, w, D)``: the backbone's last feature map, channels last (`backbone_features`)."""
    return backbone_features(module, pixel_values)[1]


def _forward_and_pool(module: nn.Module, pixel_values: torch.Tensor):
    """A transformers encoder's outputs and ``(B, D)`` pooled features: the CLS token for ViT-family
    encoders (positions interpolated for other crop sizes), the model's pooling otherwise."""
    cls_token = module.config.model_type in CLS_TOKEN_MODEL_TYPES
    outputs = module(pixel_values=pixel_values, **({"interpolate_pos_encoding": True} if cls_token else {}))
    return outputs, outputs.last_hidden_state[:, 0] if cls_token else _pooled(outputs)


def _pooled(outputs) -> torch.Tensor:
    """``(B, D)``: the model's pooler output, or the mean of its last hidden state when it was built
    without a pooler (a Swin backbone)."""
    if outputs.pooler_output is not None:
        return outputs.pooler_output.flatten(1)  # (B, D) or (B, D, 1, 1) for ResNet
    hidden = outputs.last_hidden_state
    return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))


def _tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int] | None, height: int, width: int) -> torch.Tensor:
    """``(B, T, D)`` tokens -> ``(B, h, w, D)``: the last ``h * w`` tokens on `grid`, or all of them on
    the grid of the image's aspect (Swin's last stage) when `grid` is None."""
    if grid is None:
        count = tokens.shape[1]
        rows = round(math.sqrt(count * height / width))
        grid = (rows, count // rows)
    rows, cols = grid
    if rows * cols > tokens.shape[1] or rows * cols <= 0:
        raise ValueError(f"cannot place {tokens.shape[1]} tokens on a {rows}x{cols} grid")
    return tokens[:, tokens.shape[1] - rows * cols:].reshape(tokens.shape[0], rows, cols, tokens.shape[-1])


class VisionBackbone(nn.Module):
    """Any vision encoder as ``(B, C, H, W) -> (B, D)`` pooled features.

    Args:
        nested_config: the backbone's nested config (`BackboneSpec.nested()`), stored in the
            method config so that loading rebuilds it offline.

    Attributes:
        model: the plain transformers / timm module (what `export_backbone` writes).
        feature_dimension: D.
    """

    def __init__(self, nested_config: dict):
        super().__init__()
        self.model = build_backbone(nested_config)
        self.feature_dimension = feature_dimension(self.model)
        # transformers' post_init collects `_no_split_modules` from a model's children: FSDP's
        # auto-wrap (accelerate) and device maps then wrap / place whole blocks of this backbone.
        self._no_split_modules = set(getattr(self.model, "_no_split_modules", None) or repeated_block_names(self.model))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.model, pixel_values)


def repeated_block_names(model: nn.Module) -> set[str]:
    """Class names of the residual blocks of a timm model (``Block``, ``ConvNeXtBlock``,
    ``BasicBlock``, ``Bottleneck``...): the units FSDP wraps and a device map keeps whole."""
    return {type(module).__name__ for module in model.modules()
            if type(module).__name__.endswith(("Block", "Bottleneck")) and not isinstance(module, (nn.Sequential, nn.ModuleList))}


def copy_backbone_weights(target: nn.Module, source: nn.Module) -> None:
    """Copy every weight of `source` into `target` (same architecture); names must match exactly."""
    source_state = source.state_dict()
    target_state = target.state_dict()
    missing = sorted(set(target_state) - set(source_state))
    if missing:
        raise ValueError(f"the pre-trained backbone lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, tensor in target_state.items():
        if source_state[name].shape != tensor.shape:
            raise ValueError(
                f"pre-trained weight {name} has shape {tuple(source_state[name].shape)}, the model expects "
                f"{tuple(tensor.shape)} (a different image size or architecture; use --from_scratch to ignore the weights)"
            )
    target.load_state_dict({name: source_state[name] for name in target_state}, strict=True)


__all__ = [
    "VisionBackbone",
    "build_backbone",
    "copy_backbone_weights",
    "feature_dimension",
    "is_timm_module",
    "load_pretrained_backbone",
    "nested_backbone_config",
    "pooled_features",
    "spatial_features",
]
