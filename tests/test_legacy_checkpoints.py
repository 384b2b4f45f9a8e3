"""Checkpoints saved by earlier hf-ssl versions (tests/fixtures/legacy_v<version>/<name>, each made
by the MADE_WITH.py beside it) load with `AutoModel` and give the loss they gave when they were
saved, on the inputs saved next to them (``torch.manual_seed(0)`` before ``forward``, which draws
the random masks). 0.2 saved one folder per method."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

import hf_ssl  # noqa: F401  (registers the hf-ssl model types)

ROOT = Path(__file__).parent / "fixtures"
FIXTURES = ROOT / "legacy_v0_1"
FOLDERS = sorted(f"{version.name}/{folder.name}" for version in ROOT.glob("legacy_v*")
                 for folder in version.iterdir() if (folder / "config.json").is_file())


def test_every_fixture_is_checked():
    assert [name for name in FOLDERS if name.startswith("legacy_v0_1/")] == [
        "legacy_v0_1/beit", "legacy_v0_1/mae", "legacy_v0_1/simmim_vit", "legacy_v0_1/splitmask"]
    assert [name.split("/")[1] for name in FOLDERS if name.startswith("legacy_v0_2/")] == [
        "barlow_twins", "beit", "byol", "dino", "dual_encoder", "mae", "moco_v3", "simclr", "simmim", "simsiam",
        "splitmask", "vicreg"]


@pytest.mark.parametrize("name", FOLDERS)
def test_legacy_checkpoint_loads_with_its_saved_loss(name):
    folder = ROOT / name
    model = AutoModel.from_pretrained(folder).eval()
    reference = load_file(str(folder / "reference_io.safetensors"))
    expected = reference.pop("expected_loss")
    torch.manual_seed(0)
    with torch.no_grad():
        loss = model(**reference).loss
    torch.testing.assert_close(loss.reshape(1), expected, rtol=1e-5, atol=1e-6)


def test_beit_saved_as_a_splitmask_objective_loads_as_its_own_method(tmp_path):
    """BEiT was SplitMask's ``objective="beit"``: its saved config loads as a BEiTConfig without
    SplitMask's fields, and configs that only the old class could build fail with a reason."""
    beit = AutoModel.from_pretrained(FIXTURES / "beit")
    assert type(beit).__name__ == "ViTForBEiT" and not hasattr(beit.config, "objective")
    assert not hasattr(AutoModel.from_pretrained(FIXTURES / "splitmask").config, "objective")
    config = json.loads((FIXTURES / "splitmask" / "config.json").read_text())
    for name, changes, message in (
        ("beit-objective", {"objective": "beit"}, "BEiT is its own method"),
        ("beit-decoder", {"model_type": "hf-ssl-beit", "objective": "beit", "decoder_num_hidden_layers": 1},
         "BEiT has not"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**config, **changes}))
        with pytest.raises(ValueError, match=message):
            AutoConfig.from_pretrained(tmp_path / name)
