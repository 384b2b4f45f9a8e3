"""Safetensors-only `from_pretrained` for hf-ssl models: pickle weights are refused, never unpickled.

A pickle checkpoint (``pytorch_model.bin``, ``*.pt``, ...) can run arbitrary code when loaded.
`SafeLoadingMixin` goes first in a model's bases; its `from_pretrained` lists the folder's (or Hub
repo's) files, raises `UnsafeCheckpointError` when there are pickle weights but no safetensors
weights, and always passes ``use_safetensors=True`` so that transformers itself never falls back
to a pickle file (it raises instead when no safetensors weights exist).

This module imports nothing from hf_ssl: `hf_ssl.remote_code.add_remote_code` copies it next to the
modeling files of a ``trust_remote_code`` folder, where hf_ssl may not be installed.
"""

from __future__ import annotations

import os
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UnsafeCheckpointError(ValueError):
    """The checkpoint only has pickle weights, which hf-ssl refuses to load."""


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
):
    """`auto_class.from_pretrained` after the safetensors check, with ``use_safetensors=True``.

    Args:
        path_or_repo_id: a local folder or a Hub repo id.
        auto_class: a transformers Auto class or model class (default `AutoModel`; hf-ssl's model
            types resolve once ``hf_ssl`` is imported).
        revision, token, subfolder: as in `from_pretrained`.
        **kwargs: passed on (e.g. ``trust_remote_code=True``).
    """
    from transformers import AutoModel

    auto_class = auto_class or AutoModel
    check_safetensors_only(list_checkpoint_files(path_or_repo_id, revision, token), str(path_or_repo_id), subfolder)
    if subfolder:
        kwargs["subfolder"] = subfolder
    return auto_class.from_pretrained(
        str(path_or_repo_id), revision=revision, token=token, use_safetensors=True, **kwargs
    )


class SafeLoadingMixin:
    """Put first in the bases of a `PreTrainedModel` subclass: `from_pretrained` loads safetensors only.

    Also covers ``AutoModel.from_pretrained`` (the Auto classes call the model class's
    `from_pretrained`) and ``trust_remote_code`` folders that carry a copy of this module.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        if kwargs.get("use_safetensors") is False:
            raise UnsafeCheckpointError(
                f"{cls.__name__}.from_pretrained(use_safetensors=False): hf-ssl models load safetensors weights only"
            )
        kwargs["use_safetensors"] = True
        if pretrained_model_name_or_path is not None and kwargs.get("state_dict") is None:
            try:
                files = list_checkpoint_files(pretrained_model_name_or_path, kwargs.get("revision"), kwargs.get("token"))
            except Exception:  # listing is only for a clearer message: use_safetensors=True still refuses pickles
                files = None
            if files is not None:
                check_safetensors_only(files, str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
