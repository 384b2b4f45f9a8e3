"""The installed entry points, run as a user runs them: from any folder, without the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _run(command: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def _console_script() -> str:
    script = Path(sys.executable).parent / "hf-ssl"
    return str(script) if script.exists() else shutil.which("hf-ssl")


def test_console_help_and_version_do_not_import_the_package(tmp_path):
    """`hf-ssl --help` used to import every model (torch, transformers, torchvision: 5 s of CPU) to print six lines."""
    probe = ("import sys, hf_ssl_console; codes = [hf_ssl_console.main(['--help']), hf_ssl_console.main(['--version'])]; "
             "print(codes, sorted(name for name in ('hf_ssl', 'torch', 'transformers') if name in sys.modules))")
    result = _run([sys.executable, "-c", probe], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("usage: hf-ssl <command>") and any(line.startswith("hf-ssl 0.") for line in lines)
    assert lines[-1] == "[0, 0] []"


@pytest.mark.slow
def test_console_script_lists_commands_and_each_command_has_help(tmp_path):
    script = _console_script()
    assert script, "the hf-ssl console script is not installed (pip install -e .)"
    listing = _run([script, "--help"], tmp_path)
    assert listing.returncode == 0 and all(name in listing.stdout for name in ("pretrain", "evaluate", "push", "analyze"))
    unknown = _run([script, "train"], tmp_path)
    assert unknown.returncode == 2 and "unknown command 'train'" in unknown.stderr
    for command in ("pretrain", "evaluate", "push"):
        result = _run([script, command, "--help"], tmp_path)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert result.stdout.startswith(f"usage: hf-ssl {command} "), result.stdout[:200]
    assert _run([script, "--version"], tmp_path).stdout.startswith("hf-ssl ")
    # the method's own flags appear once the method is named
    assert "--tokenizer_fit_batches" in _run([script, "pretrain", "--help"], tmp_path).stdout


@pytest.mark.slow
def test_module_entry_point_reports_bad_input_in_one_line(tmp_path):
    result = _run([sys.executable, "-m", "hf_ssl.cli.pretrain", "--method", "nope"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --method 'nope' is not a registered method; available: {result.stderr.split('available: ')[1].strip()}"
    ]
    evaluation = _run([sys.executable, "-m", "hf_ssl.cli.evaluate", "--model", str(tmp_path / "missing")], tmp_path)
    assert evaluation.returncode == 2 and len(evaluation.stderr.strip().splitlines()) == 1
    assert evaluation.stderr.startswith("error:")
