"""The benchmark suite keeps working: FLOP formulas, the load guard, and a micro run's result files.

No timing is asserted anywhere: the numbers belong to the machine that ran them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPOSITORY = Path(__file__).resolve().parents[1]
BENCHMARKS = REPOSITORY / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from harness import count_flops, load_problem


def test_cpu_attention_counts_the_flops_of_the_cuda_kernels():
    """Without the registered formulas FlopCounterMode counts CPU SDPA as zero; with them a forward
    counts two matmuls, as the math backend's decomposition does."""
    query, key, value = (torch.randn(2, 3, 50, 16) for _ in range(3))
    counted = count_flops(lambda: F.scaled_dot_product_attention(query, key, value))
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        math_flops = count_flops(lambda: F.scaled_dot_product_attention(query, key, value))
    assert counted == math_flops == 2 * (2 * 2 * 3 * 50 * 50 * 16)


def test_cpu_attention_backward_is_counted():
    query, key, value = (torch.randn(1, 2, 10, 8, requires_grad=True) for _ in range(3))
    forward_only = count_flops(lambda: F.scaled_dot_product_attention(query, key, value))
    with_backward = count_flops(lambda: F.scaled_dot_product_attention(query, key, value).sum().backward())
    assert with_backward > 2 * forward_only


def test_load_guard_names_the_load():
    assert load_problem(0.3) is None
    assert load_problem(0.5) is None
    assert load_problem(3.87) == "load average 3.87 at start: timings not comparable"


def test_bad_flag_exits_2_with_one_line(capsys):
    import run

    with pytest.raises(SystemExit) as exit_info:
        run.parse_arguments(["--rounds", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["run.py: error: --rounds must be >= 1, got 0"]


def test_auto_precision_adds_bf16_only_where_it_is_native(monkeypatch):
    import harness
    import run

    cpu = torch.device("cpu")
    monkeypatch.setattr(harness, "bf16_is_native", lambda device: False)
    assert run.resolve_precisions(["auto"], cpu) == ["fp32"]
    monkeypatch.setattr(harness, "bf16_is_native", lambda device: True)
    assert run.resolve_precisions(["auto"], cpu) == ["fp32", "bf16"]
    assert run.resolve_precisions(["bf16", "fp32", "bf16"], cpu) == ["bf16", "fp32"]


@pytest.mark.slow
def test_micro_run_writes_json_and_markdown(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "run.py"), "--force", "--sizes", "micro", "--rounds", "1", "--steps", "1",
               "--methods", "splitmask", "mae", "--output", str(tmp_path)]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (json_path,) = tmp_path.glob("*.json")
    (markdown_path,) = tmp_path.glob("*.md")
    assert json_path.stem == markdown_path.stem
    results = json.loads(json_path.read_text())

    assert isinstance(results["valid"], bool)
    assert results["valid"] == (results["invalid_reason"] is None)
    if not results["valid"]:
        assert results["invalid_reason"].endswith("at start: timings not comparable")
    for moment in ("start", "end"):
        assert len(results["load"][moment]["load_average"]) == 3
        assert results["matmul_gflops"][moment]["fp32"] > 0 and results["matmul_gflops"][moment]["bf16"] > 0
    assert results["matmul_gflops"]["utilisation_reference"]["dtype"] in ("fp32", "bf16")
    for field in ("cpu_model", "cpu_bf16_flags", "torch_threads", "torch", "transformers", "bf16_native"):
        assert field in results["host"]

    rows = results["rows"]
    assert not [row for row in rows if row["status"] == "failed"]
    measured = [row for row in rows if row["status"] == "measured"]
    # Default precisions: fp32, plus bf16 autocast where the host computes bf16 natively.
    precisions = ("fp32", "bf16") if results["host"]["bf16_native"] else ("fp32",)
    assert results["settings"]["precisions"] == list(precisions)
    groups = {(row["method"], row["precision"]) for row in measured}
    assert groups == {(method, precision) for method in ("splitmask", "mae") for precision in precisions}
    for method, precision in groups:
        group = [row for row in measured if (row["method"], row["precision"]) == (method, precision)]
        implementations = {row["implementation"] for row in group if row["lever"] == "baseline"}
        assert "hf-ssl" in implementations and len(implementations) == 2  # hf-ssl and its transformers reference
        levers = {row["lever"] for row in group if row["implementation"] == "hf-ssl"}
        assert {"baseline", "foreach AdamW", "for-loop AdamW", "SDPA math", ".item() per step"} <= levers
        # Every baseline row, hf-ssl's and the reference's, steps with the trainer's fused AdamW.
        assert {row["optimizer_implementation"] for row in group if row["lever"] == "baseline"} == {"fused"}
    for row in measured:
        assert row["size"] == "micro" and row["image_size"] == 32
        assert row["images_per_second_best"] >= row["images_per_second_median"] > 0
        assert len(row["images_per_second_rounds"]) == 1
        assert row["flops_per_step"] > 0 and 0 < row["utilisation"]
        assert row["peak_memory_mib"] > 0
        assert row["speed_ratio"] > 0 and row["compared_with"]
        assert row["loader_workers_needed"] >= 1

    decoders = {(result["case"], result["decoder"]) for result in results["data"]["per_worker"].values()
                if "best_per_second" in result}
    assert decoders == {(case, decoder) for case in ("splitmask micro", "mae micro") for decoder in ("PIL", "torchvision.io")}
    assert results["data"]["loader_stack"]["images_per_second"] > 0

    text = markdown_path.read_text()
    for heading in ("## Implementations", "## Levers", "## Data"):
        assert heading in text
    assert "| splitmask | vit-micro | 32 | fp32 | hf-ssl |" in text
    assert "| mae | vit-micro | 32 | fp32 | transformers ViTMAEForPreTraining |" in text
    assert ("NOT VALID" in text) == (not results["valid"])


@pytest.mark.slow
def test_micro_run_measures_every_other_method_next_to_its_reference(tmp_path):
    """Every registered method has a case; the lightly rows need ``pip install --no-deps --target .lightly lightly``."""
    from cases import CASES

    from hf_ssl.recipes import available_methods, get_recipe

    # hf-ssl's own methods (other test modules register methods of their own in this process)
    shipped = {method for method in available_methods() if type(get_recipe(method)).__module__.startswith("hf_ssl.modeling.")}
    methods = sorted(shipped - {"splitmask", "mae"})
    lightly = REPOSITORY / ".lightly"
    command = [sys.executable, str(BENCHMARKS / "run.py"), "--force", "--sizes", "micro", "--rounds", "1", "--steps", "1",
               "--warmup", "1", "--levers", "none", "--skip_data", "--precisions", "fp32", "--methods", *methods,
               "--output", str(tmp_path), *(["--lightly_path", str(lightly)] if (lightly / "lightly").is_dir() else [])]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (json_path,) = tmp_path.glob("*.json")
    rows = json.loads(json_path.read_text())["rows"]
    assert not [row for row in rows if row["status"] == "failed"], rows
    measured = {(row["method"], row["implementation"]) for row in rows if row["status"] == "measured"}
    for method in methods:
        assert (method, "hf-ssl") in measured, method
        references = {implementation for name, implementation in measured if name == method} - {"hf-ssl"}
        if CASES[method].references and ("lightly" not in CASES[method].references or (lightly / "lightly").is_dir()):
            assert references, f"{method} has no reference row"


def test_levers_change_how_a_step_runs_not_what_it_computes():
    from hf_ssl.recipes import parameter_groups
    from steps import BASELINE, Levers, ModelStep, build_training_step

    batch = {"pixel_values": torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))}
    losses = {}
    for levers in (BASELINE, Levers(optimizer="foreach"), Levers(optimizer="for-loop"), Levers(channels_last=True),
                   Levers(item_per_step=True), Levers(sdpa_backend="math")):
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 4))
        model_step = ModelStep(module=module, loss=lambda runner, inputs: runner(inputs["pixel_values"]).square().mean(),
                               parameter_groups=parameter_groups(module, 0.05))
        step = build_training_step(model_step, batch, torch.device("cpu"), "fp32", levers, 1e-3, (0.9, 0.999), 1.0)
        losses[levers.label()] = [float(step.run().detach()) for _ in range(3)]
    for label, values in losses.items():
        assert values == pytest.approx(losses["baseline"], rel=1e-4), label
    assert losses["baseline"][2] < losses["baseline"][0]  # the steps do train
