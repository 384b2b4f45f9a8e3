"""Safe loading of hf-ssl checkpoints: safetensors only, never unpickle.

A pickle checkpoint (``pytorch_model.bin``, ``*.pt``, ...) can execute code when loaded. Before any
`from_pretrained`, the helpers here list the folder's (or Hub repo's) files and refuse a checkpoint
that has pickle weights but no safetensors weights; the load itself passes
``use_safetensors=True`` so that transformers never falls back to a pickle file. The checks
themselves live in `hf_ssl.safe_loading` (which every hf-ssl model's `from_pretrained` uses too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from hf_ssl.safe_loading import (  # noqa: F401  (re-exported: hf_ssl.hub is where users look for them)
    PICKLE_SUFFIXES,
    UnsafeCheckpointError,
    check_safetensors_only,
    list_checkpoint_files,
)


def _register_hf_ssl_models() -> None:
    from hf_ssl.registry import register_auto_classes

    register_auto_classes()


def load_pretrained(
    path_or_repo_id: str | os.PathLike,
    auto_class=None,
    revision: str | None = None,
    token: str | bool | None = None,
    subfolder: str = "",
    **kwargs,
) -> nn.Module:
    """`auto_class.from_pretrained` after the safetensors check, with ``use_safetensors=True``.

    Args:
        path_or_repo_id: a local folder or a Hub repo id.
        auto_class: a transformers Auto class or model class (default `AutoModel`); hf-ssl models
            are registered first so that their model types resolve.
        revision, token, subfolder: as in `from_pretrained`.
        **kwargs: passed on (e.g. ``trust_remote_code=True``).
    """
    from transformers import AutoModel

    if not kwargs.get("trust_remote_code"):
        _register_hf_ssl_models()
    auto_class = auto_class or AutoModel
    check_safetensors_only(list_checkpoint_files(path_or_repo_id, revision, token), str(path_or_repo_id), subfolder)
    if subfolder:
        kwargs["subfolder"] = subfolder
    return auto_class.from_pretrained(
        str(path_or_repo_id), revision=revision, token=token, use_safetensors=True, **kwargs
    )


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
