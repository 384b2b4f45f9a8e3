"""`hf_ssl.safe_loading.SafeLoadingMixin`: from_pretrained (direct and through AutoModel) loads
safetensors only and never unpickles a pickle checkpoint."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel

import hf_ssl.safe_loading as safe_loading
from hf_ssl.hub import UnsafeCheckpointError as HubUnsafeCheckpointError
from hf_ssl.safe_loading import SafeLoadingMixin, UnsafeCheckpointError


class SafeTinyConfig(PreTrainedConfig):
    model_type = "hf-ssl-safe-loading-test"

    def __init__(self, hidden_size: int = 4, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)


class SafeTinyModel(SafeLoadingMixin, PreTrainedModel):
    config_class = SafeTinyConfig
    base_model_prefix = "tiny"

    def __init__(self, config: SafeTinyConfig):
        super().__init__(config)
        self.linear = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs)


AutoConfig.register(SafeTinyConfig.model_type, SafeTinyConfig, exist_ok=True)
AutoModel.register(SafeTinyConfig, SafeTinyModel, exist_ok=True)


class _WritesMarker:
    """Unpickling this creates the file named by $SAFE_LOADING_TEST_MARKER (a stand-in for any code)."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["SAFE_LOADING_TEST_MARKER"]),))


def _saved(folder: Path) -> SafeTinyModel:
    torch.manual_seed(0)
    model = SafeTinyModel(SafeTinyConfig())
    model.save_pretrained(folder)
    return model


def _write_payload(path: Path, marker: Path, monkeypatch) -> None:
    monkeypatch.setenv("SAFE_LOADING_TEST_MARKER", str(marker))
    path.write_bytes(pickle.dumps({"linear.weight": _WritesMarker()}))


def test_safetensors_checkpoint_loads_directly_and_through_auto_model(tmp_path):
    model = _saved(tmp_path / "model")
    for loaded in (SafeTinyModel.from_pretrained(tmp_path / "model"), AutoModel.from_pretrained(tmp_path / "model")):
        assert type(loaded) is SafeTinyModel
        torch.testing.assert_close(loaded.linear.weight, model.linear.weight, rtol=0, atol=0)


def test_pickle_only_checkpoint_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    _saved(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    _write_payload(folder / "pytorch_model.bin", marker, monkeypatch)
    for load in (SafeTinyModel.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(UnsafeCheckpointError, match=r"only pickle weights \(pytorch_model\.bin\)"):
            load(folder)
    with pytest.raises(UnsafeCheckpointError, match="use_safetensors=False"):
        SafeTinyModel.from_pretrained(folder, use_safetensors=False)
    assert not marker.exists()
    assert HubUnsafeCheckpointError is UnsafeCheckpointError  # re-exported where users look for it


def test_pickle_next_to_safetensors_is_ignored(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    model = _saved(folder)
    marker = tmp_path / "payload-ran"
    _write_payload(folder / "pytorch_model.bin", marker, monkeypatch)
    loaded = AutoModel.from_pretrained(folder)
    torch.testing.assert_close(loaded.linear.weight, model.linear.weight, rtol=0, atol=0)
    assert not marker.exists()


def test_a_plain_model_would_have_unpickled_it(tmp_path, monkeypatch):
    """The mixin is what protects: the same folder without it reaches the pickle (guards the test itself)."""

    class PlainTinyModel(PreTrainedModel):
        config_class = SafeTinyConfig

        def __init__(self, config):
            super().__init__(config)
            self.linear = nn.Linear(config.hidden_size, config.hidden_size)
            self.post_init()

    folder = tmp_path / "model"
    _saved(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"linear.weight": torch.zeros(4, 4), "linear.bias": torch.zeros(4)}, folder / "pytorch_model.bin")
    loaded = PlainTinyModel.from_pretrained(folder)  # transformers 5 loads a (benign) pickle when nothing forbids it
    assert torch.count_nonzero(loaded.linear.weight) == 0
    with pytest.raises(UnsafeCheckpointError):
        SafeTinyModel.from_pretrained(folder)


def test_safe_loading_imports_nothing_from_hf_ssl():
    tree = ast.parse(Path(safe_loading.__file__).read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name and name.split(".")[0] == "hf_ssl"]
    assert all(node.level == 0 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))
