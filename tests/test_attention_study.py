"""benchmarks/attention_study.py on tiny random ViTs: it runs, writes its files and gives a verdict."""

import json
import sys
from pathlib import Path

import pytest
from transformers import ViTConfig, ViTModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import attention_study  # noqa: E402


def _tiny_vit(folder: Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    ViTModel(ViTConfig(image_size=48, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(folder)
    return folder


def test_study_writes_table_figure_and_a_verdict(tmp_path):
    first, second = _tiny_vit(tmp_path / "a", 0), _tiny_vit(tmp_path / "b", 1)
    output = tmp_path / "out"
    assert attention_study.main(["--models", f"mim:{first}", f"contrastive:{second}", "--num_images", "4",
                                 "--output_dir", str(output)]) == 0
    report = json.loads((output / "attention_study.json").read_text())
    assert list(report["models"]) == ["mim: a", "random init", "contrastive: b"]
    for model in report["models"].values():
        assert len(model["head_kl_divergence"]) == 2 and all(value >= 0 for value in model["head_kl_divergence"])
        assert all(spread >= 0 for spread in model["distance_spread"])
    assert report["verdict"].startswith(("HOLDS", "DOES NOT HOLD"))
    assert "Verdict:" in (output / "attention_study.md").read_text()
    assert (output / "attention_study.png").read_bytes().startswith(b"\x89PNG")


def test_study_without_a_comparison_says_so_and_bad_input_exits_2(tmp_path, capsys):
    assert attention_study.verdict({"x": {"family": "mim", "head_kl_divergence": [0.1]}}).startswith("no verdict")
    assert attention_study.main(["--models", f"mim:{tmp_path / 'missing'}", "--output_dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        attention_study.parse_arguments(["--models", "no-family"])
