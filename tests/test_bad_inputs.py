"""A new user's mistakes, run as a user runs them: the installed `hf-ssl` from a folder outside the repository.

Every bad input below ends with exit code 2 and one line on stderr that names the fix: no
traceback, and no wait (each is found before any model is loaded, with the Hub reachable or not).
"within a few seconds" is measured against the same machine's fastest refusal, the import of
hf-ssl itself, which on 2 busy cores alone takes 6-25 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

# Beyond the import of hf-ssl: what a check before any model is loaded may take (reading a small folder's headers).
FEW_SECONDS = 15

# (command line, what the one error line says, extra environment); {images} / {corrupt} / {finished}
# are folders the fixture makes; relative paths are relative to the user's (empty) working folder.
BAD_INPUTS = [
    # issue 30, items 1-4 and 13
    ("pretrain --max_stepz 5", "unrecognized argument --max_stepz (did you mean --max_steps?)", {}),
    ("pretrain --local_crops_number 4", "it is a flag of --method dino", {}),
    ("evaluate --model runs/no_such_run", "--model 'runs/no_such_run': no such folder", {"HF_HUB_OFFLINE": None}),
    ("pretrain --model runs/no_such_run --max_steps 5", "--model 'runs/no_such_run': no such folder", {"HF_HUB_OFFLINE": None}),
    ("analyze attention --model runs/no_such_run --out maps", "--model 'runs/no_such_run': no such folder",
     {"HF_HUB_OFFLINE": None}),
    ("push runs/no_such_run --repo_id me/x", "runs/no_such_run: no such folder", {"HF_HUB_OFFLINE": None}),
    ("pretrain --mixed_precision bf16 --max_steps 5", "contradicts accelerate launch --mixed_precision fp16",
     {"ACCELERATE_MIXED_PRECISION": "fp16"}),
    ("pretrain --dataset_name {images} --max_steps 5 --total_batch_size 64", "lower --total_batch_size", {}),
    ("evaluate --modle runs/x", "the following arguments are required: --model", {}),
    ("prtrain --max_steps 5", "unknown command 'prtrain'", {}),
    # the nine that already worked
    ("pretrain --dataset_name ./no_such_folder --max_steps 5", "--dataset_name './no_such_folder': no such folder", {}),
    ("pretrain --method simclrr", "--method 'simclrr' is not a registered method", {}),
    ("pretrain --model vit-smal --max_steps 5", "--model 'vit-smal' is not a preset", {}),
    ("pretrain --recipe mae-vit-base --max_steps 5", "--preset 'mae-vit-base' is not a published configuration", {}),
    ("pretrain --model timm/resnet181 --max_steps 5", "timm has no model 'resnet181'", {}),
    ("pretrain --model ./no_such_model --max_steps 5", "--model './no_such_model': no such folder", {"HF_HUB_OFFLINE": None}),
    ("pretrain --method mae --model timm/resnet18 --max_steps 5", "--method mae needs a vit backbone", {}),
    ("pretrain --method mae --model vit-small --image_size 100 --max_steps 5", "must be divisible by patch_size", {}),
    ("pretrain --max_steps 0", "--max_steps must be >= 1, got 0", {}),
    ("pretrain --dataset_name {corrupt} --max_steps 5", "is a readable image", {}),
    ("pretrain --max_steps 5 --output_dir {finished}", "already holds a run", {}),
]


def _console_script() -> str:
    script = Path(sys.executable).parent / "hf-ssl"
    return str(script) if script.exists() else shutil.which("hf-ssl")


def _run(command_line: str, cwd: Path, folders: dict[str, Path], environment: dict) -> tuple[subprocess.CompletedProcess, float]:
    variables = {name: value for name, value in os.environ.items() if name != "ACCELERATE_MIXED_PRECISION"}
    variables["HF_HUB_OFFLINE"] = "1"  # None below: the Hub is reachable as far as hf-ssl knows
    for name, value in environment.items():
        if value is None:
            variables.pop(name, None)
        else:
            variables[name] = value
    arguments = [argument.format(**folders) for argument in command_line.split()]
    start = time.perf_counter()
    result = subprocess.run([_console_script(), *arguments], cwd=cwd, env=variables, capture_output=True, text=True,
                            timeout=600)
    return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user")
    images, corrupt, finished = root / "holiday-photos", root / "broken-scans", root / "finished-run"
    for folder in (images, corrupt, finished):
        folder.mkdir()
    generator = np.random.default_rng(0)
    for index in range(20):
        Image.fromarray(generator.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(images / f"IMG_{index:04d}.png")
        (corrupt / f"scan{index:02d}.jpg").write_bytes(b"not a jpeg")
    (finished / "config.json").write_text("{}")
    (finished / "model.safetensors").write_bytes(b"")
    return {"images": images, "corrupt": corrupt, "finished": finished}


@pytest.fixture(scope="module")
def import_time(tmp_path_factory) -> float:
    """Wall time of the earliest refusal (an unknown method, found while parsing): hf-ssl's import alone."""
    result, elapsed = _run("pretrain --method nope", tmp_path_factory.mktemp("reference"), {}, {})
    assert result.returncode == 2
    return elapsed


@pytest.mark.parametrize("command_line, message, environment", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_is_one_line_and_exit_2_at_once(command_line, message, environment, folders, import_time, tmp_path):
    result, elapsed = _run(command_line, tmp_path, folders, environment)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-3000:]
    assert elapsed < import_time + FEW_SECONDS, f"{elapsed:.1f} s, against {import_time:.1f} s for hf-ssl's import"
    assert not any(tmp_path.iterdir()), "a refused command wrote into the user's folder"
