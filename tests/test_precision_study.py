"""benchmarks/precision_study.py at its reduced (CI) size: fp32 and bf16 runs of the same seeds, compared."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_study_pairs_the_precisions_per_seed_and_writes_table_and_plot(tmp_path):
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "precision_study.py"), "--reduced",
               "--output_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=REPOSITORY,
                               env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "precision_study.json").read_text())
    result = report["methods"]["splitmask"]
    assert set(result["precisions"]) == {"no", "bf16"}
    for summary in result["precisions"].values():
        assert len(summary["knn"]["values"]) == 2 and all(0 <= value <= 1 for value in summary["knn"]["values"])
        assert [curve["seed"] for curve in summary["curves"]] == [0, 1]
        assert all(len(curve["losses"]) == 6 for curve in summary["curves"])  # --logging_steps 1, 6 steps
    # Same seed, other precision: the paired differences are what the runs measured.
    fp32, bf16 = result["precisions"]["no"], result["precisions"]["bf16"]
    comparison = result["against_reference"]["bf16"]["knn"]
    assert comparison["paired_differences"] == pytest.approx(
        [b - a for a, b in zip(fp32["knn"]["values"], bf16["knn"]["values"])])
    assert set(report["baselines"]) == {"random_init", "raw_pixels"}
    table = (tmp_path / "precision_study.md").read_text()
    assert "| splitmask | bf16 |" in table and "| raw pixels |" in table
    assert (tmp_path / "precision_study.png").read_bytes().startswith(b"\x89PNG")


def test_one_seed_is_refused_in_one_line():
    completed = subprocess.run([sys.executable, str(REPOSITORY / "benchmarks" / "precision_study.py"), "--seeds", "0"],
                               capture_output=True, text=True, cwd=REPOSITORY)
    assert completed.returncode == 2 and "needs at least two seeds" in completed.stderr
    assert "Traceback" not in completed.stderr
