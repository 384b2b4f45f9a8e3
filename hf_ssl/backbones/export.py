"""Write a backbone as a checkpoint the ecosystem loads without hf-ssl.

- transformers backbones: ``save_pretrained`` + ``preprocessor_config.json`` -> `AutoModel`,
  `AutoModelForImageClassification`, ``pipeline("image-feature-extraction")``.
- timm backbones, and transformers ViTs converted to timm's layout: timm's own folder format
  (``config.json`` with ``architecture`` / ``model_args`` / ``pretrained_cfg`` + ``model.safetensors``)
  -> ``timm.create_model("local-dir:<folder>", pretrained=True)`` (or ``hf-hub:<repo>`` once
  pushed), and transformers' `AutoModel` through its `TimmWrapperModel`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import SegformerImageProcessor, ViTConfig, ViTImageProcessor
from transformers.image_utils import PILImageResampling

from .modules import nested_backbone_config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_image_processor(
    image_size: int, image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD
) -> ViTImageProcessor:
    """Resize to `image_size` (bicubic), rescale to [0, 1], normalise: the run's evaluation preprocessing."""
    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
    )


def segmentation_image_processor(image_processor=None, image_size: int | None = None) -> SegformerImageProcessor:
    """A processor that resizes the whole image to a square (no crop: the masks must line up with
    the pixels) with `image_processor`'s normalisation and resampling, and that has the
    ``post_process_semantic_segmentation`` ``pipeline("image-segmentation")`` calls.

    Args:
        image_processor: the backbone's processor (ImageNet normalisation and 224 px without one).
        image_size: the side; default the processor's (its height, shortest edge or crop height).
    """
    if image_size is None:
        sizes = [getattr(image_processor, "size", None) or {}, getattr(image_processor, "crop_size", None) or {}]
        image_size = next((int(size[key]) for size in sizes for key in ("height", "shortest_edge") if key in size), 224)
    return SegformerImageProcessor(
        do_resize=True, size={"height": image_size, "width": image_size},
        resample=getattr(image_processor, "resample", None) or PILImageResampling.BICUBIC,
        do_rescale=True, rescale_factor=getattr(image_processor, "rescale_factor", None) or 1 / 255,
        do_normalize=True, image_mean=list(getattr(image_processor, "image_mean", None) or IMAGENET_MEAN),
        image_std=list(getattr(image_processor, "image_std", None) or IMAGENET_STD), do_reduce_labels=False,
    )


def _processor_size(image_processor: ViTImageProcessor) -> int:
    size = image_processor.size  # a SizeDict ({"height", "width"}) in transformers 5.x
    return int(size["height"]) if "height" in size else int(size["shortest_edge"])


def save_timm_folder(
    state_dict: dict[str, torch.Tensor],
    architecture: str,
    model_args: dict,
    num_features: int,
    save_directory: str | Path,
    image_processor: ViTImageProcessor,
) -> Path:
    """Write timm's folder format (what ``timm.models.push_to_hf_hub`` writes) for `state_dict`."""
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    image_size = _processor_size(image_processor)
    config = {
        "architecture": architecture,
        "num_classes": 0,
        "num_features": num_features,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, image_size, image_size],
            "fixed_input_size": not model_args.get("dynamic_img_size", False),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(image_processor.image_mean),
            "std": list(image_processor.image_std),
            "num_classes": 0,
        },
    }
    (save_directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({name: tensor.detach().contiguous().cpu() for name, tensor in state_dict.items()},
              str(save_directory / "model.safetensors"), metadata={"format": "pt"})
    return save_directory


def vit_to_timm_state_dict(state_dict: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename a transformers `ViTModel` (no pooler) state dict to timm's `VisionTransformer` layout.

    q, k and v projections are concatenated into timm's fused ``qkv``; every source weight must be
    used exactly once (a rename in a future transformers release fails loudly here).
    """
    renamed = {
        "cls_token": state_dict["embeddings.cls_token"],
        "pos_embed": state_dict["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state_dict["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state_dict["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state_dict["layernorm.weight"],
        "norm.bias": state_dict["layernorm.bias"],
    }
    used = {"embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.projection.weight",
            "embeddings.patch_embeddings.projection.bias", "layernorm.weight", "layernorm.bias"}
    simple = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.o_proj": "attn.proj",
              "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for layer in range(num_layers):
        source, target = f"layers.{layer}.", f"blocks.{layer}."
        for old, new in simple.items():
            for kind in ("weight", "bias"):
                renamed[f"{target}{new}.{kind}"] = state_dict[f"{source}{old}.{kind}"]
                used.add(f"{source}{old}.{kind}")
        for kind in ("weight", "bias"):
            names = [f"{source}attention.{projection}_proj.{kind}" for projection in ("q", "k", "v")]
            renamed[f"{target}attn.qkv.{kind}"] = torch.cat([state_dict[name] for name in names], dim=0)
            used.update(names)
    leftover = sorted(set(state_dict) - used - {"embeddings.mask_token"})
    if leftover:
        raise KeyError(f"ViT -> timm conversion would drop {leftover}")
    return renamed


def timm_vit_model_args(config: ViTConfig) -> dict:
    """timm `VisionTransformer` arguments that compute what the transformers ViT computes.

    ``global_pool="avg"`` with ``fc_norm=False`` keeps the final norm on every token and then
    averages the patch tokens: the mean pooling hf-ssl's evaluation uses.
    """
    if abs(config.layer_norm_eps - 1e-6) > 1e-12:
        raise ValueError(f"timm ViTs use LayerNorm eps 1e-6; this ViT uses {config.layer_norm_eps}")
    return {
        "img_size": int(config.image_size),
        "patch_size": int(config.patch_size),
        "in_chans": int(config.num_channels),
        "embed_dim": int(config.hidden_size),
        "depth": int(config.num_hidden_layers),
        "num_heads": int(config.num_attention_heads),
        "mlp_ratio": config.intermediate_size / config.hidden_size,
        "qkv_bias": bool(config.qkv_bias),
        "global_pool": "avg",
        "fc_norm": False,
    }


def plain_backbone(backbone: nn.Module) -> nn.Module:
    """`backbone` as the plain transformers class users load, holding every weight that class expects.

    Masked-image-modeling encoders carry a learned mask token (``embeddings.mask_token``) that no
    downstream model has: the copy drops it (DINOv2's classes, which have one, keep it). Encoders built without their pooler (hf-ssl builds
    ViTs that way: no objective trains it) get it back as the class initialises it, seeded, so
    that ``AutoModel.from_pretrained`` finds every weight and prints no load report. Features
    (``last_hidden_state``, hf-ssl's mean or CLS pooling) do not pass through it; a Swin's pooler
    has no parameters at all.
    """
    if type(backbone).__module__.startswith("timm."):
        return backbone
    state = backbone.state_dict()
    takes_pooler = "add_pooling_layer" in inspect.signature(type(backbone).__init__).parameters
    lacks_pooler = takes_pooler and getattr(backbone, "pooler", None) is None
    if "embeddings.mask_token" not in state and not lacks_pooler:
        return backbone
    with torch.random.fork_rng(devices=[]):  # the same pooler in every export, and the caller's RNG untouched
        torch.manual_seed(0)
        copy = type(backbone)(backbone.config, **({"add_pooling_layer": True} if takes_pooler else {}))
    # DINOv2's classes hold a mask token themselves (iBOT's, in every released checkpoint): kept there.
    keeps_mask_token = "embeddings.mask_token" in copy.state_dict()
    missing, unexpected = copy.load_state_dict(
        {name: tensor for name, tensor in state.items() if keeps_mask_token or name != "embeddings.mask_token"},
        strict=False,
    )
    if unexpected or [name for name in missing if not name.startswith("pooler.")]:
        raise KeyError(f"{type(backbone).__name__} export: weights missing {missing}, unexpected {unexpected}")
    return copy.to(next(backbone.parameters()).device).eval()


def export_backbone_folder(backbone: nn.Module, save_directory: str | Path, image_processor: ViTImageProcessor) -> Path:
    """Write `backbone` (a transformers model or a timm model) where plain transformers / timm load it."""
    save_directory = Path(save_directory)
    if type(backbone).__module__.startswith("timm."):
        nested = nested_backbone_config(backbone)
        return save_timm_folder(backbone.state_dict(), nested["architecture"], nested["model_args"],
                                int(backbone.num_features), save_directory, image_processor)
    plain_backbone(backbone).save_pretrained(save_directory)
    image_processor.save_pretrained(save_directory)
    return save_directory


def export_vit_to_timm(vit: nn.Module, save_directory: str | Path, image_processor: ViTImageProcessor) -> Path:
    """Write a transformers `ViTModel` in timm's format (``vit_base_patch16_224`` with its sizes as model_args)."""
    config = vit.config
    state = vit_to_timm_state_dict(vit.state_dict(), config.num_hidden_layers)
    return save_timm_folder(state, "vit_base_patch16_224", timm_vit_model_args(config), int(config.hidden_size),
                            save_directory, image_processor)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "default_image_processor",
    "export_backbone_folder",
    "export_vit_to_timm",
    "plain_backbone",
    "save_timm_folder",
    "segmentation_image_processor",
    "timm_vit_model_args",
    "vit_to_timm_state_dict",
]
