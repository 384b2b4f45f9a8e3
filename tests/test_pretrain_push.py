"""The whole user path in one command: pre-train, write the card, push, over real HTTP."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hub_server import HubServer
from run_folders import DIGITS_VIT_RUN

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_pretrainpush_0123456789abcdef"


def _environment(**overrides) -> dict:
    environment = dict(os.environ, HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **overrides)
    environment.pop("HF_HUB_OFFLINE", None)  # only 127.0.0.1 is reachable: the local server
    environment.pop("OMP_NUM_THREADS", None)
    return environment


@pytest.mark.slow
def test_pretrain_writes_the_card_and_pushes_model_and_backbone(tmp_path):
    output_dir = tmp_path / "run"
    with HubServer(expected_token=SECRET, lifetime_s=240) as hub:
        environment = _environment(HF_ENDPOINT=hub.url, HF_TOKEN=SECRET, HF_HOME=str(tmp_path / "hf-home"))
        result = subprocess.run(
            [sys.executable, str(ROOT / "trainers" / "pretrain.py"), "--method", "splitmask", *DIGITS_VIT_RUN,
             "--max_steps", "6", "--save_steps", "6",
             "--report_to", "none", "--output_dir", str(output_dir), "--push_to_hub", "--hub_model_id", "org/digits-splitmask"],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Pushed to the Hub" in result.stdout
        pushed = hub.files("org/digits-splitmask")
        backbone = hub.files("org/digits-splitmask-backbone")
    for name in ("README.md", "config.json", "model.safetensors", "loss_curve.png", "reconstruction.png", "modeling_splitmask.py"):
        assert name in pushed, name
    assert pushed["model.safetensors"] == (output_dir / "model.safetensors").read_bytes()
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(backbone)
    assert not any(name.startswith("checkpoints/") for name in pushed)
    card = ModelCard(pushed["README.md"].decode())
    assert "splitmask" in card.data.tags
    # One model-index entry per metric of this model's kNN; the random-init baseline is not one.
    knn = [entry for entry in card.data.eval_results if entry.metric_name.startswith("k-NN")]
    assert [entry.metric_type for entry in knn] == ["accuracy", "top-5-accuracy"]
    assert 0.0 < knn[0].metric_value <= 1.0
    assert "random init" in pushed["README.md"].decode()
    assert SECRET not in result.stdout + result.stderr
