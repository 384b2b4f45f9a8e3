"""A value written like a path that does not exist is reported at once, never tried as a Hub id."""

from __future__ import annotations

import pytest

from hf_ssl.backbones import resolve_backbone
from hf_ssl.cli import analyze, evaluate, push
from hf_ssl.data import DatasetConfigurationError, load_image_dataset
from hf_ssl.local_paths import check_local_path, looks_local


@pytest.mark.parametrize("name, local", [
    ("runs/no_such_run", True),        # hf-ssl's own run folders
    ("./model", True),
    ("../model", True),
    ("/abs/model", True),
    ("~/model", True),
    ("org/name/extra", True),          # a Hub id has at most one slash
    ("windows\\model", True),
    ("existing/model", True),          # its first folder exists here
    ("google/vit-base-patch16-224", False),
    ("vit-small", False),
    ("timm/resnet18", False),
])
def test_what_looks_local(name, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    assert looks_local(name) is local


def test_an_existing_folder_passes_and_a_missing_one_names_the_flag_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "done").mkdir(parents=True)
    check_local_path("runs/done", "--model")
    check_local_path("google/vit-base-patch16-224", "--model")
    with pytest.raises(ValueError, match=rf"^--model 'runs/gone': no such folder \(relative to {tmp_path}\)$"):
        check_local_path("runs/gone", "--model")


def test_pretrain_model_and_dataset_paths_fail_before_any_hub_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ValueError, match="--model 'runs/no_such_run': no such folder"):
        resolve_backbone("runs/no_such_run", 32)
    with pytest.raises(DatasetConfigurationError, match="--dataset_name './no_such_folder': no such folder"):
        load_image_dataset("./no_such_folder")


@pytest.mark.parametrize("main, argv, message", [
    (evaluate.main, ["--model", "runs/no_such_run"], "error: --model 'runs/no_such_run': no such folder"),
    (evaluate.main, ["--model", "runs/done", "--baselines", "pretrained:../gone"],
     "error: --baselines pretrained: '../gone': no such folder"),
    (analyze.main, ["cka", "--model", "runs/done", "--other_model", "runs/no_such_run", "--out", "o"],
     "error: analyze cka: --other_model 'runs/no_such_run': no such folder"),
    (push.main, ["runs/no_such_run", "--repo_id", "me/x"], "error: runs/no_such_run: no such folder"),
    (push.main, ["runs/done", "--repo_id", "me/x"], "error: runs/done is not a run folder (no config.json)"),
])
def test_commands_report_a_missing_folder_in_one_line_with_exit_2(main, argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "runs" / "done").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_request:
        code = main(argv)
        raise SystemExit(code)
    assert exit_request.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
