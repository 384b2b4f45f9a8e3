"""benchmarks/sample_efficiency.py and benchmarks/quality.py at their reduced (CI) sizes: the studies
run end to end, share their runs, and report every row and baseline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
PLAN_COLUMNS = {"knn", "linear", "linear-10%", "linear-1%", "linear-1-per-class", "finetune-10%"}
DENSE_COLUMNS = {"segmentation_linear", "segmentation_linear-10%"}  # the quality benchmark's, on the scenes' masks


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPOSITORY / "benchmarks" / script), "--reduced", "--output_dir", str(tmp_path),
               "--runs_dir", str(tmp_path / "runs")]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=REPOSITORY,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.mark.slow
def test_reduced_studies_write_tables_plots_verdicts_and_every_baseline(tmp_path):
    completed = _run("sample_efficiency.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "sample_efficiency.json").read_text())
    rows = report["results"]
    for method in ("splitmask", "dino"):
        for fraction in ("0.1", "1"):
            assert set(rows[f"{method} @ {fraction}"]) == PLAN_COLUMNS
    assert set(rows["random init"]) == set(rows["raw pixels"]) == PLAN_COLUMNS
    assert set(rows["supervised"]) == {"finetune", "finetune-10%", "finetune-1%", "finetune-1-per-class"}
    assert rows["supervised"]["finetune-10%"] == rows["random init"]["finetune-10%"]  # fine-tuning from random init
    assert all(0 <= value["mean"] <= 1 for columns in rows.values() for value in columns.values())
    assert [line for line in report["verdict"] if line.startswith("splitmask: linear probe")]
    table = (tmp_path / "sample_efficiency.md").read_text()
    assert "| raw pixels |" in table and "| splitmask @ 0.1 |" in table and "## Verdict" in table
    assert (tmp_path / "sample_efficiency.png").read_bytes().startswith(b"\x89PNG")

    # the quality benchmark reuses the 100 % SplitMask run measured above (same budget, same runs folder)
    measured = json.loads((tmp_path / "runs" / "results.json").read_text())
    completed = _run("quality.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "pre-trained splitmask-vit-micro" not in completed.stdout  # measured once, by the first study
    quality = json.loads((tmp_path / "quality.json").read_text())["results"]
    assert set(quality) == {"simclr (vit-micro)", "splitmask (vit-micro)", "simclr (resnet-micro)",
                            "distillation from simclr resnet-micro (vit-micro)",
                            *(f"{row} ({backbone})" for row in ("random init", "raw pixels", "supervised")
                              for backbone in ("vit-micro", "resnet-micro"))}
    assert set(quality["simclr (resnet-micro)"]) == PLAN_COLUMNS | DENSE_COLUMNS
    assert set(quality["distillation from simclr resnet-micro (vit-micro)"]) == PLAN_COLUMNS | DENSE_COLUMNS
    assert set(quality["splitmask (vit-micro)"]) == PLAN_COLUMNS | DENSE_COLUMNS  # its run from the first study
    for backbone in ("vit-micro", "resnet-micro"):
        assert set(quality[f"raw pixels ({backbone})"]) == set(quality[f"random init ({backbone})"]) == \
            PLAN_COLUMNS | DENSE_COLUMNS
    assert all(0 <= value["mean"] <= 1 for columns in quality.values() for value in columns.values())
    assert set(json.loads((tmp_path / "runs" / "results.json").read_text())) > set(measured)
    table = (tmp_path / "quality.md").read_text()
    assert "## vit-micro" in table and "## resnet-micro" in table and "| *supervised* |" in table
    assert "segmentation_linear-10%" in table
    assert (tmp_path / "quality.png").read_bytes().startswith(b"\x89PNG")
