"""What ``--model`` names: a preset, a transformers model (Hub id or local folder), or ``timm/<name>``.

`resolve_backbone` turns the string into a `BackboneSpec`, which holds the backbone's config as a
plain dict (the form a method config stores nested, so that ``from_pretrained`` rebuilds the
backbone offline) and, for a checkpoint, where to read its weights from.

Nested form (``BackboneSpec.config``):

- transformers: the config's ``to_dict()`` (it carries ``model_type``), e.g. a `ViTConfig`;
- timm: ``{"architecture": "resnet18", "model_args": {...}}``, the keys of timm's own
  ``config.json`` (``timm.create_model(architecture, **model_args)``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, PreTrainedConfig

from hf_ssl.local_paths import check_local_path
from hf_ssl.safe_loading import PICKLE_SUFFIXES

from .presets import available_presets, is_preset, preset_config

BackboneSource = Literal["preset", "transformers", "timm"]
TIMM_PREFIX = "timm/"
TIMM_MODEL_TYPE = "timm_wrapper"


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved ``--model``.

    Args:
        name: the string the user gave.
        source: ``"preset"`` (hf-ssl's named sizes), ``"transformers"`` (any `AutoModel` vision
            config: ViT, Swin, ConvNeXt, ResNet, DINOv2, ...) or ``"timm"``.
        config: the nested backbone config (see the module docstring).
        weights: folder or Hub id whose safetensors weights initialise the backbone; None for a
            random init (presets, timm names, ``--from_scratch``).
    """

    name: str
    source: BackboneSource
    config: dict = field(default_factory=dict)
    weights: str | None = None

    @property
    def is_timm(self) -> bool:
        return self.source == "timm"

    @property
    def family(self) -> str:
        """``"timm"`` or the transformers ``model_type`` (``"vit"``, ``"swin"``, ``"convnext"``, ...)."""
        return "timm" if self.is_timm else str(self.config.get("model_type"))

    def transformers_config(self) -> PreTrainedConfig:
        """The transformers config object (not for timm backbones)."""
        if self.is_timm:
            raise ValueError(f"{self.name!r} is a timm model; it has no transformers config")
        return config_from_dict(self.config)

    def nested(self) -> dict:
        """What a method config stores: ``{"source": "transformers" | "timm", **config}``."""
        return {"source": "timm" if self.is_timm else "transformers", **copy.deepcopy(self.config)}


def config_from_dict(config: dict) -> PreTrainedConfig:
    """Rebuild a transformers config from its ``to_dict()`` form (offline)."""
    values = {key: value for key, value in config.items() if key not in ("source", "transformers_version")}
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"a transformers backbone config needs a 'model_type', got keys {sorted(config)}")
    return AutoConfig.for_model(model_type, **values)


def _timm_spec(name: str, architecture: str, image_size: int | None, weights: str | None, model_args: dict) -> BackboneSpec:
    try:
        import timm
    except ImportError as error:  # timm is a declared dependency; say so if it is missing
        raise ValueError(f"--model {name}: timm is not installed ({error})") from error
    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture.split('.')[0][:12]}*")[:8]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"--model {name}: timm has no model {architecture!r}{hint}")
    # timm writes the classifier size into a folder's model_args; hf-ssl always builds without a head.
    model_args = {key: value for key, value in model_args.items() if key != "num_classes"}
    if image_size is not None and weights is None and _accepts_image_size(architecture):
        model_args.setdefault("img_size", image_size)
    return BackboneSpec(name=name, source="timm", config={"architecture": architecture, "model_args": model_args},
                        weights=weights)


def _accepts_image_size(architecture: str) -> bool:
    """True for timm models whose constructor takes ``img_size`` (ViTs, Swins): built on meta, no memory."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            timm.create_model(architecture, pretrained=False, num_classes=0, img_size=224)
    except TypeError:
        return False
    return True


def _check_weights(folder: Path) -> None:
    """Check that a ``--model`` folder's safetensors weights are readable (headers only: nothing is loaded).

    Raises:
        ValueError: no weights, only pickle weights (never loaded: unpickling can run code), or a
            safetensors file whose header does not parse; each says what to do instead.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"--model {folder}: {index.name} does not parse ({type(error).__name__}: {error})") from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        scratch = "or pass --from_scratch to train its architecture from random init"
        pickles = sorted(path.name for path in folder.iterdir() if path.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ValueError(
                f"--model {folder} holds only pickle weights ({', '.join(pickles)}), which hf-ssl never loads because "
                f"unpickling can run code: save them as model.safetensors (if you trust them), {scratch}"
            )
        raise ValueError(f"--model {folder} holds a config.json but no weights (model.safetensors): add them, {scratch}")
    for name in files:
        try:
            with safe_open(str(folder / name), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ValueError(f"--model {folder}: {name} is not a readable safetensors file ({error})") from None


def resolve_backbone(name: str, image_size: int | None = None, from_scratch: bool = False) -> BackboneSpec:
    """Resolve ``--model``.

    Args:
        name: a preset (``"vit-small"``), ``"timm/<architecture>"``, a local folder holding a
            transformers or timm ``config.json``, or a Hub model id (read from the local cache when
            offline).
        image_size: the run's input size: sets the size of presets, timm ViTs and configs trained
            from scratch (a checkpoint keeps its own size).
        from_scratch: ignore a checkpoint's weights and initialise randomly from its config.

    Raises:
        ValueError: the name is none of the above (the message says what was tried), or a folder
            whose weights are missing, pickle only or unreadable without `from_scratch`.
    """
    if is_preset(name):
        if image_size is None:
            raise ValueError(f"--model {name}: a preset needs an image size")
        return BackboneSpec(name=name, source="preset", config=preset_config(name, image_size).to_dict())
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name, name[len(TIMM_PREFIX):], image_size, None, {})
    check_local_path(name, "--model")
    local = Path(name)
    if not local.exists() and "/" not in name.strip("/"):
        raise ValueError(
            f"--model {name!r} is not a preset ({', '.join(available_presets())}), not timm/<name>, not a folder "
            "and not a Hub id (org/name)"
        )
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(name)
    except (OSError, ValueError) as error:
        where = str(error).splitlines()[0]
        raise ValueError(
            f"--model {name!r} is not a preset ({', '.join(available_presets())}), not timm/<name>, and no "
            f"transformers config could be read ({where}). Offline, give a local folder with config.json."
        ) from error
    if local.is_dir() and not from_scratch:
        _check_weights(local)
    weights = None if from_scratch else name
    if config_dict.get("model_type") in (None, TIMM_MODEL_TYPE) and "architecture" in config_dict:
        return _timm_spec(name, config_dict["architecture"], image_size, weights, config_dict.get("model_args") or {})
    config = config_from_dict(config_dict)
    if weights is None and image_size is not None and hasattr(config, "image_size"):
        config.image_size = image_size
    return BackboneSpec(name=name, source="transformers", config=config.to_dict(), weights=weights)


__all__ = ["BackboneSpec", "TIMM_PREFIX", "config_from_dict", "resolve_backbone"]
