"""Checkpoints saved by hf-ssl 0.1 (tests/fixtures/legacy_v0_1) load with `AutoModel` and give the
loss they gave when they were saved, on the inputs saved next to them."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import hf_ssl  # noqa: F401  (registers the hf-ssl model types)

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_v0_1"
FOLDERS = sorted(folder.name for folder in FIXTURES.iterdir() if (folder / "config.json").is_file())


def test_every_fixture_is_checked():
    assert FOLDERS == ["beit", "mae", "simmim_vit", "splitmask"]


@pytest.mark.parametrize("name", FOLDERS)
def test_legacy_checkpoint_loads_with_its_saved_loss(name):
    folder = FIXTURES / name
    model = AutoModel.from_pretrained(folder).eval()
    reference = load_file(str(folder / "reference_io.safetensors"))
    expected = reference.pop("expected_loss")
    with torch.no_grad():
        loss = model(**reference).loss
    torch.testing.assert_close(loss.reshape(1), expected, rtol=1e-5, atol=1e-6)
