"""``--compile``: what auto decides, and a compilation failure that runs eagerly instead of failing the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_ssl.training.compilation import COMPILE_COSTS, CompileCost, resolve_compile


def test_yes_and_no_are_taken_as_given_and_a_typo_is_refused():
    cpu = torch.device("cpu")
    assert resolve_compile("yes", cpu, "simclr", 10) == (True, "given")
    assert resolve_compile("no", torch.device("cuda"), "simclr", 10**6) == (False, "given")
    with pytest.raises(ValueError, match="compile must be one of"):
        resolve_compile("true", cpu, "simclr", 10)


def test_auto_compiles_only_runs_long_enough_to_pay_back_the_measured_compile_time(monkeypatch):
    monkeypatch.setitem(COMPILE_COSTS, ("cpu", "dino"), CompileCost(break_even_steps=1000, measured="test"))
    cpu = torch.device("cpu")
    compiled, why = resolve_compile("auto", cpu, "dino", 5000)
    assert compiled and "1000 steps for dino on cpu" in why
    compiled, why = resolve_compile("auto", cpu, "dino", 1500)
    assert not compiled and "1000 steps" in why and "1500" in why
    compiled, why = resolve_compile("auto", torch.device("cuda"), "dino", 10**6)
    assert not compiled and "not measured for dino on cuda" in why
    compiled, why = resolve_compile("auto", cpu, "a-method-nobody-measured", 10**6)
    assert not compiled and "not measured" in why


def test_auto_never_compiles_where_compiling_was_measured_not_to_pay(monkeypatch):
    monkeypatch.setitem(COMPILE_COSTS, ("cpu", "simclr"), CompileCost(break_even_steps=None, measured="test"))
    compiled, why = resolve_compile("auto", torch.device("cpu"), "simclr", 10**9)
    assert not compiled and "never" in why


def test_every_measured_cost_names_a_registered_method_and_a_plausible_break_even():
    from hf_ssl.recipes import available_methods

    for (device_kind, method), cost in COMPILE_COSTS.items():
        assert device_kind in ("cpu", "cuda", "mps", "xpu") and method in available_methods()
        assert cost.break_even_steps is None or cost.break_even_steps > 0
        assert cost.measured


# Run in a child process: compiling in the test process would leave autograd's threads behind, which
# the fork-based multi-process tests that follow cannot run with.
FAILING_BACKEND_SCRIPT = """
import torch
from hf_ssl.training.compilation import compile_in_place
from tiny_models import tiny_splitmask

calls = []

def failing_backend(graph_module, example_inputs):
    calls.append(len(example_inputs))
    raise RuntimeError("no C++ compiler (injected)")

model = tiny_splitmask(fitted=False).eval()
backbone = model.get_backbone()
names = set(backbone.state_dict())
pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    expected = backbone(pixel_values=pixel_values).last_hidden_state
compile_in_place(backbone, backend=failing_backend)
with torch.no_grad():
    actual = backbone(pixel_values=pixel_values).last_hidden_state
assert calls, "the backend was never asked to compile"
torch.testing.assert_close(actual, expected)
assert set(backbone.state_dict()) == names
print("ran eagerly after", len(calls), "failed compilation(s)")
"""


def test_a_backend_that_fails_leaves_the_model_running_eagerly():
    tests = Path(__file__).resolve().parent
    completed = subprocess.run([sys.executable, "-c", FAILING_BACKEND_SCRIPT], capture_output=True, text=True,
                               cwd=tests, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent)])),
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "ran eagerly after" in completed.stdout
