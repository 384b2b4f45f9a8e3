"""benchmarks/sample_efficiency.py at its reduced (CI) size: the study runs end to end and reports every row."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_study_writes_the_table_the_plot_and_every_baseline(tmp_path):
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "sample_efficiency.py"), "--reduced",
               "--output_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=REPOSITORY,
                               env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "sample_efficiency.json").read_text())
    rows = report["results"]
    for method in ("splitmask", "dino"):
        for fraction in ("0.1", "1"):
            assert set(rows[f"{method} @ {fraction}"]) == {"knn", "linear", "finetune"}
    assert set(rows["random init"]) == set(rows["raw pixels"]) == {"knn", "linear"}
    assert set(rows["supervised"]) == {"finetune"}
    assert all(0 <= value["mean"] <= 1 for columns in rows.values() for value in columns.values())
    table = (tmp_path / "sample_efficiency.md").read_text()
    assert "| raw pixels |" in table and "| splitmask @ 0.1 |" in table
    assert (tmp_path / "sample_efficiency.png").read_bytes().startswith(b"\x89PNG")
