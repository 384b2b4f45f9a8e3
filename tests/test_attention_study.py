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


def test_the_segmentation_study_scores_each_model_next_to_random_init_and_supervised(tmp_path):
    """benchmarks/attention_segmentation.py: DINO's Jaccard measure per model, the references, a verdict, the figure."""
    import attention_segmentation

    first, second = _tiny_vit(tmp_path / "a", 0), _tiny_vit(tmp_path / "b", 1)
    output = tmp_path / "out"
    assert attention_segmentation.main(["--models", f"dino:{first}", f"mim:{second}", "--supervised",
                                        "--supervised_max_steps", "2", "--num_images", "8", "--output_dir", str(output)]) == 0
    report = json.loads((output / "attention_segmentation.json").read_text())
    assert list(report["models"]) == ["dino: a", "random init", "supervised (CLS classifier)", "mim: b"]
    for model in report["models"].values():
        assert len(model["per_head"]) == 4 and 0 <= model["best_head_jaccard"] <= 1
        assert model["best_head_jaccard"] == max(model["per_head"]) >= model["mean_over_heads"]
        assert model["every_patch"] < model["foreground_patches"]  # the scale a head is read on
    assert report["models"]["supervised (CLS classifier)"]["supervised"]["steps"] == 2
    assert report["verdict"].startswith(("DINO's property APPEARS", "DINO's property DOES NOT APPEAR"))
    assert (output / "attention_segmentation.png").read_bytes().startswith(b"\x89PNG")
    assert attention_segmentation.verdict({"x": {"family": "mim", "best_head_jaccard": 0.1}}).startswith("no verdict")
