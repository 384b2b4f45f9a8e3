"""benchmarks/compile_study.py at its reduced (CI) size: one method trained eagerly and compiled, compared.

The compiled run is a real ``torch.compile`` (inductor) of the trainer's model: it trains, logs and
saves the same weights names as the eager run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "benchmarks"))

from compile_study import compare, merged  # noqa: E402


@pytest.mark.slow
def test_reduced_study_trains_eagerly_and_compiled_and_writes_table_and_plot(tmp_path):
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "compile_study.py"), "--reduced",
               "--output_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs"), "--host_name", "test"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=REPOSITORY,
                               env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "compile_study-test.json").read_text())
    row = report["methods"]["simmim"]
    for choice in ("no", "yes"):
        (run,) = row["runs"][choice]  # one repeat
        assert [window["step"] for window in run["windows"]] == [1, 2, 3, 4]  # --logging_steps 1
    assert row["speedup"] == pytest.approx(row["compiled_images_per_second"] / row["eager_images_per_second"])
    assert row["eager_spread"] == 0.0 and row["eager_rates"] == [row["eager_images_per_second"]]
    assert row["eager_fallbacks"] == 0 and row["recompilations"] == 0
    compiled_args = json.loads((tmp_path / "runs" / "simmim-compile-yes" / "training_args.json").read_text())
    eager_args = json.loads((tmp_path / "runs" / "simmim-compile-no" / "training_args.json").read_text())
    assert compiled_args["compiled"] is True and eager_args["compiled"] is False

    def weight_names(run: str) -> set[str]:
        with safe_open(tmp_path / "runs" / run / "model.safetensors", "pt") as weights:
            return set(weights.keys())

    assert weight_names("simmim-compile-yes") == weight_names("simmim-compile-no")
    assert "| simmim |" in (tmp_path / "compile_study-test.md").read_text()
    assert (tmp_path / "compile_study-test.png").read_bytes().startswith(b"\x89PNG")


def test_merging_a_rerun_replaces_its_rows_and_keeps_where_each_row_was_measured():
    def run(command: str, methods: dict, valid: bool = True) -> dict:
        return {"command": command, "load_average": {"start": command}, "valid": valid, "seconds": 10.0, "methods": methods}

    first = run("first", {"beit": {"speedup": 1.0}, "dino": {"speedup": 1.1}})
    result = merged(merged(first, run("second", {"dino": {"speedup": 1.2}})), run("third", {"mae": {}}, valid=False))
    assert result["methods"] == {"beit": {"speedup": 1.0}, "dino": {"speedup": 1.2}, "mae": {}}
    assert {method: facts["command"] for method, facts in result["runs_of"].items()} == {
        "beit": "first", "dino": "second", "mae": "third"}
    assert result["seconds"] == 30.0 and result["valid"] is False


def test_compare_reads_the_speedup_per_back_to_back_pair_and_reports_the_drift_between_pairs():
    def run(first_window_seconds: float, rate: float, **counts) -> dict:
        windows = [{"step": 10 * (index + 1), "images_per_second": rate,
                    "seconds": first_window_seconds if index == 0 else 640 / rate} for index in range(5)]
        return {"windows": windows, "wall_seconds": 10.0, "peak_resident_mib": 100.0,
                **{"recompilations": 0, "graph_breaks": 0, "eager_fallbacks": 0, **counts}}

    row = compare([run(2.0, 100.0), run(2.0, 120.0)], [run(12.0, 200.0), run(14.0, 200.0, recompilations=1)],
                  images_per_step=64)
    # Pairs (100 -> 200, 120 -> 200): the speed-up is the median of 2.0 and 1.67, not 200 / 110.
    assert row["pair_speedups"] == pytest.approx([2.0, 200 / 120])
    assert row["eager_images_per_second"] == 110.0 and row["speedup"] == pytest.approx((2.0 + 200 / 120) / 2)
    assert row["eager_spread"] == pytest.approx(20 / 110)
    assert row["compile_seconds"] == pytest.approx(13.0 - 2.0)
    assert row["break_even_steps"] == pytest.approx(11.0 / (64 / 110 - 64 / (110 * row["speedup"])))
    assert row["recompilations"] == 1
    slower = compare([run(2.0, 100.0)], [run(12.0, 90.0)], images_per_step=64)
    assert slower["break_even_steps"] is None
