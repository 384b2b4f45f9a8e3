"""The folder a training run ends with (`save_run_folder`): an optional extra never fails the run,
the remote code its card promises is there, and the exported encoder loads silently in plain
transformers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import ViTConfig, ViTModel

from hf_ssl.backbones import default_image_processor
from hf_ssl.hub import write_model_card
from hf_ssl.recipes import build_model
from hf_ssl.training.outputs import hardware_description, read_training_arguments, save_run_folder

IMAGE_SIZE = 32
TINY_VIT = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64)


def _run_folder(tmp_path, model_name: str = "vit-micro", method: str = "simclr"):
    torch.manual_seed(0)
    model = build_model(method, model=model_name, image_size=IMAGE_SIZE)
    run_dir = tmp_path / "run"
    save_run_folder(model, run_dir, default_image_processor(IMAGE_SIZE),
                    {"method": method, "model": model_name, "dataset_name": "digits", "max_steps": 2})
    return run_dir


def test_a_vit_timm_cannot_express_still_gets_its_run_folder(tmp_path, caplog):
    """transformers' ViTConfig (and every google/vit-* checkpoint) uses LayerNorm eps 1e-12, timm's
    ViT 1e-6: the timm copy used to raise at the final save, after the whole run, so that
    training_args.json, the card, the timm export and the push were all lost."""
    folder = tmp_path / "google-style-vit"
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["layer_norm_eps"] == 1e-12
    with caplog.at_level(logging.WARNING):
        run_dir = _run_folder(tmp_path, str(folder))
    assert json.loads((run_dir / "training_args.json").read_text())["method"] == "simclr"
    assert (run_dir / "backbone" / "model.safetensors").is_file()
    assert not (run_dir / "backbone_timm").exists()
    assert "backbone_timm/ not written, timm has no equivalent of this encoder" in caplog.text and "1e-12" in caplog.text
    assert write_model_card(run_dir).is_file()


def test_the_run_folder_carries_the_remote_code_its_card_promises(tmp_path):
    """Uploading the folder as it is (huggingface-cli upload) must give a repo that loads with
    trust_remote_code: the code used to be added by `hf-ssl push` only."""
    run_dir = _run_folder(tmp_path)
    auto_map = json.loads((run_dir / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_simclr.BackboneForSimCLR"
    assert (run_dir / "modeling_simclr.py").is_file() and (run_dir / "configuration_simclr.py").is_file()
    card = (write_model_card(run_dir)).read_text()
    assert f'AutoModel.from_pretrained("{run_dir}", trust_remote_code=True)' in card
    # a folder without the code (saved by hand) is not promised to load without hf-ssl
    config = json.loads((run_dir / "config.json").read_text())
    del config["auto_map"]
    (run_dir / "config.json").write_text(json.dumps(config))
    assert "trust_remote_code" not in write_model_card(run_dir).read_text()


@pytest.mark.slow
def test_the_run_folder_loads_with_trust_remote_code_where_hf_ssl_is_not_installed(tmp_path):
    run_dir = _run_folder(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hf_ssl"] = None  # importing hf_ssl now raises ImportError
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(run_dir)!r}, trust_remote_code=True)
        print(type(model).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "BackboneForSimCLR"


@pytest.mark.parametrize("method, model_name", [("simclr", "vit-micro"), ("splitmask", "vit-micro"), ("simmim", "swin-micro")])
def test_the_exported_encoder_loads_with_automodel_without_a_load_report(method, model_name, tmp_path):
    """Every exported ViT used to print "MISSING pooler.dense" when loaded with AutoModel: hf-ssl
    builds ViTs without the pooler, and ViTModel expects one."""
    from transformers import AutoModel

    reports = []

    class Reports(logging.Handler):
        def emit(self, record):
            reports.append(record.getMessage())

    run_dir = _run_folder(tmp_path, model_name, method)
    handler = Reports(level=logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    try:
        encoder = AutoModel.from_pretrained(run_dir / "backbone")
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [report for report in reports if "LOAD REPORT" in report], reports
    assert type(encoder).__name__ in ("ViTModel", "SwinModel")


def test_hardware_says_one_thread_not_one_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert hardware_description(torch.device("cpu")).endswith(", 1 thread)")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert hardware_description(torch.device("cpu")).endswith(", 2 threads)")


def test_the_recorded_arguments_read_back_and_a_damaged_record_reads_as_none(tmp_path):
    run_dir = _run_folder(tmp_path)
    assert read_training_arguments(run_dir)["dataset_name"] == "digits"
    assert read_training_arguments(run_dir / "backbone") == {}  # a folder without one
    for damaged in ("{not json", "[1, 2]", ""):
        (run_dir / "training_args.json").write_text(damaged)
        assert read_training_arguments(run_dir) == {}
