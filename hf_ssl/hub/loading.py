"""Safe loading of hf-ssl checkpoints: safetensors only, never unpickle.

A pickle checkpoint (``pytorch_model.bin``, ``*.pt``, ...) can execute code when loaded. Before any
`from_pretrained`, the helpers here list the folder's (or Hub repo's) files and refuse a checkpoint
that has pickle weights but no safetensors weights; the load itself passes
``use_safetensors=True`` so that transformers never falls back to a pickle file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UnsafeCheckpointError(ValueError):
    """The checkpoint only has pickle weights, which hf-ssl refuses to load."""


def _register_hf_ssl_models() -> None:
    from hf_ssl.registry import register_auto_classes

    register_auto_classes()


def list_checkpoint_files(
    path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
) -> list[str]:
    """Relative paths of every file of a local folder or a Hub model repo.

    Local folders are walked; repos are listed through the Hub API, or, with HF_HUB_OFFLINE=1,
    from the cached snapshot (``snapshot_download(local_files_only=True)``).
    """
    local = Path(path_or_repo_id)
    if local.is_dir():
        return sorted(str(path.relative_to(local).as_posix()) for path in local.rglob("*") if path.is_file())
    from huggingface_hub import HfApi, constants, snapshot_download

    repo_id = str(path_or_repo_id)
    if constants.HF_HUB_OFFLINE:
        cached = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        return list_checkpoint_files(cached)
    return sorted(HfApi().list_repo_files(repo_id, revision=revision, token=token))


def check_safetensors_only(files: list[str], source: str, subfolder: str = "") -> None:
    """Raise unless `files` hold safetensors weights (at `subfolder`); name any pickle weights found.

    Raises:
        UnsafeCheckpointError: only pickle weights are present.
        FileNotFoundError: no weights at all.
    """
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    level = [name[len(prefix) :] for name in files if name.startswith(prefix) and "/" not in name[len(prefix) :]]
    if any(name.endswith(".safetensors") or name == "model.safetensors.index.json" for name in level):
        return
    pickles = [prefix + name for name in level if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise UnsafeCheckpointError(
            f"{source} has only pickle weights ({', '.join(pickles)}); hf-ssl loads safetensors only, because "
            "unpickling can run arbitrary code. If you trust the file, convert it once with plain transformers: "
            "`model = AutoModel.from_pretrained(path, use_safetensors=False); model.save_pretrained(path)` "
            "(this writes model.safetensors), then load again."
        )
    raise FileNotFoundError(f"{source} has no model weights (expected model.safetensors in {prefix or 'the root'})")


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
        extra["add_pooling_layer"] = False  # exported encoders have no (unused) tanh pooler
    model = load_pretrained(path_or_repo_id, revision=revision, token=token, **extra)
    get_backbone = getattr(model, "get_backbone", None)
    return get_backbone() if callable(get_backbone) else model
