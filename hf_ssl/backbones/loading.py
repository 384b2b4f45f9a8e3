"""The encoder of a run folder, a backbone folder or a Hub repo, loaded safetensors-only
(`hf_ssl.safe_loading.load_pretrained`: pickle weights are refused, never unpickled)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from hf_ssl.safe_loading import load_pretrained


def _has_pooler_weights(folder: Path) -> bool:
    """True when a local checkpoint's safetensors hold ``pooler.*`` weights (names read from the headers)."""
    from safetensors import safe_open

    names = []
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as weights:
            names += list(weights.keys())
    return any(name.startswith("pooler.") for name in names)


def load_backbone(path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> nn.Module:
    """The plain encoder (ViTModel / SwinModel) of a run folder, a pushed repo or a backbone folder.

    A run folder's exported ``backbone/`` is used when present; otherwise the full model is loaded
    and its `get_backbone()` returned (a plain encoder checkpoint is returned as is).
    """
    local = Path(path_or_repo_id)
    if local.is_dir() and (local / "backbone" / "config.json").is_file():
        local = local / "backbone"
        path_or_repo_id = local
    extra = {}
    config_file = local / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "vit":
        # hf-ssl exports ViTs with their (untrained) pooler; folders exported before that have none
        extra["add_pooling_layer"] = _has_pooler_weights(local)
    model = load_pretrained(path_or_repo_id, revision=revision, token=token, **extra)
    get_backbone = getattr(model, "get_backbone", None)
    return get_backbone() if callable(get_backbone) else model
