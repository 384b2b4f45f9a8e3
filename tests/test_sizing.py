"""A run on a user's folder sizes what no one set from the data and the machine, and prints its plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ssl.data import DatasetConfigurationError
from hf_ssl.recipes import get_recipe
from hf_ssl.training import ConfigurationError, build_context, parse_arguments, resolve_arguments, validate_arguments
from hf_ssl.training import runtime
from hf_ssl.training.compilation import resolve_compile
from hf_ssl.training.plan import StepTimeEstimate, describe_plan
from hf_ssl.training.sizing import batch_size_for, image_size_for, size_from_data


def _image_folder(folder: Path, count: int, height: int = 40, width: int = 64) -> Path:
    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    for index in range(count):
        pixels = generator.integers(0, 256, (height + index % 5, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image{index:03d}.png")
    return folder


def _sized(*flags: str, world_size: int = 1):
    requested, method_arguments = parse_arguments(list(flags))
    return requested, method_arguments, size_from_data(requested, resolve_arguments(requested), method_arguments, world_size)


@pytest.mark.parametrize("median_side, largest, expected", [
    (42, 224, 48), (28, 224, 32), (64, 224, 64), (100, 224, 96), (150, 224, 160), (300, 224, 224), (500, 192, 192),
])
def test_image_size_is_the_median_side_rounded_to_what_every_preset_divides(median_side, largest, expected):
    assert image_size_for(median_side, largest) == expected


@pytest.mark.parametrize("rows, processes, workers, accumulation, expected", [
    (200, 1, 1, 1, 32),        # 200 rows: 4 batches of 32 (a batch of 64 fills only 3)
    (200, 1, 4, 1, 8),         # each of 4 workers gets 50 rows
    (200, 2, 1, 2, 16 * 2 * 2),  # 100 rows per process: micro-batches of 16, x 2 processes x 2 accumulation steps
    (10, 1, 1, 1, 2),          # never below two rows
    (100_000, 1, 4, 1, 256),   # a large dataset keeps the default
])
def test_batch_leaves_every_worker_several_batches_per_epoch(rows, processes, workers, accumulation, expected):
    assert batch_size_for(rows, processes, workers, accumulation, largest=256) == expected


def test_a_small_folder_gets_its_image_size_and_a_batch_that_fits(tmp_path):
    folder = _image_folder(tmp_path / "photos", 200)
    requested, _, (arguments, reasons) = _sized("--method", "dino", "--dataset_name", str(folder), "--max_steps", "10",
                                               "--dataloader_num_workers", "1")
    assert requested.image_size is None and requested.total_batch_size is None
    assert (arguments.image_size, arguments.total_batch_size) == (48, 32)
    assert reasons == {"image_size": "median shorter side 42 px of the first 64 images",
                       "total_batch_size": "200 images: each of the 1 DataLoader worker(s) fills 4+ batches per epoch"}


def test_given_values_are_kept_and_no_data_is_read(tmp_path):
    _, _, (arguments, reasons) = _sized("--dataset_name", str(tmp_path / "not-read"), "--max_steps", "10",
                                        "--image_size", "64", "--total_batch_size", "16")
    assert (arguments.image_size, arguments.total_batch_size, reasons) == (64, 16, {})


def test_a_checkpoint_or_timm_model_keeps_the_recipes_size(tmp_path):
    folder = _image_folder(tmp_path / "photos", 40)
    _, _, (arguments, reasons) = _sized("--model", "timm/resnet18", "--dataset_name", str(folder), "--max_steps", "10",
                                        "--dataloader_num_workers", "0")
    assert arguments.image_size == 224 and set(reasons) == {"total_batch_size"}


def test_a_batch_larger_than_the_data_names_the_flag_before_any_model_is_built(tmp_path):
    folder = _image_folder(tmp_path / "photos", 20)
    with pytest.raises(ConfigurationError, match=r"--total_batch_size 64: the dataset's 20 rows fill no batch of 64 .*"
                                                 r"lower --total_batch_size \(at most 20 here\)"):
        _sized("--dataset_name", str(folder), "--max_steps", "10", "--total_batch_size", "64")


def test_an_unreadable_folder_is_refused_naming_a_file(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for index in range(3):
        (folder / f"scan{index}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetConfigurationError, match=r"none of the first 3 rows .* readable image .*scan0.jpg"):
        _sized("--dataset_name", str(folder), "--max_steps", "10")


@pytest.mark.parametrize("cores, processes, expected", [({0, 1}, "1", 1), (set(range(16)), "1", 4), ({0}, "1", 0),
                                                        ({0, 1}, "2", 0)])
def test_dataloader_workers_follow_the_cores_this_process_may_use(cores, processes, expected, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    assert runtime.default_dataloader_workers(most=4) == expected
    arguments = resolve_arguments(parse_arguments(["--dataset_name", "org/images", "--max_steps", "1"])[0])
    assert arguments.dataloader_num_workers == expected


def test_the_plan_names_each_value_and_where_it_came_from(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    folder = _image_folder(tmp_path / "photos", 200)
    requested, method_arguments, (arguments, reasons) = _sized(
        "--method", "dino", "--dataset_name", str(folder), "--max_steps", "10", "--dataloader_num_workers", "1",
        "--mixed_precision", "no", "--output_dir", str(tmp_path / "run"))
    recipe = get_recipe("dino")
    context = build_context(arguments, method_arguments, recipe, validate_arguments(arguments, method_arguments))
    compiling = resolve_compile(arguments.compile, torch.device("cpu"), arguments.method, arguments.max_steps)
    plan = describe_plan(requested, arguments, sized=reasons, views=recipe.describe_views(context), world_size=1,
                         device="CPU", attention="sdpa", compiling=compiling).splitlines()
    assert plan[0] == "plan (CPU; every value can be set with its flag):"
    assert plan[1:11] == [
        "  method       dino",
        "  model        vit-small  (the recipe's default)",
        "  image size   48 px  (median shorter side 42 px of the first 64 images)",
        "  inputs       2 global crops of 48 px + 8 local crops of 24 px",
        "  batch        32 per step = 1 process(es) x 32 x 1 accumulation  "
        "(200 images: each of the 1 DataLoader worker(s) fills 4+ batches per epoch)",
        "  precision    no  (--mixed_precision)",
        "  attention    sdpa  (--attention auto: lean (eager, half its memory) on CPU under bf16, else SDPA)",
        "  compile      eager  (--compile auto: never pays back for dino on cpu (AMD EPYC, 2 cores, bundled run: "
        "0.68-1.09x, within the host's drift))",
        "  workers      1 DataLoader worker(s) per process  (given)",
        "  steps        10",
    ]
    assert plan[-2:] == [f"  output       {tmp_path / 'run'}", "  report       none"]  # no labels, no report


def test_the_step_time_estimate_comes_once_after_the_first_timed_steps():
    estimate = StepTimeEstimate(first_step=0, max_steps=10)
    messages = [estimate.after_step(step) for step in range(1, 11)]
    assert [index + 1 for index, message in enumerate(messages) if message] == [4]
    assert "s per step (steps 2-4): about " in messages[3] and "for the 6 steps left" in messages[3]
    resumed = StepTimeEstimate(first_step=8, max_steps=10)  # too few steps left to time
    assert [resumed.after_step(step) for step in (9, 10)] == [None, None]


@pytest.mark.slow
def test_a_run_on_a_folder_prints_its_plan_and_a_time_estimate(tmp_path):
    folder = _image_folder(tmp_path / "photos", 40)
    command = [str(Path(sys.executable).parent / "hf-ssl"), "pretrain", "--model", "resnet-micro", "--dataset_name",
               str(folder), "--max_steps", "5", "--report_to", "none", "--output_dir", str(tmp_path / "run")]
    result = subprocess.run(command, cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "  image size   48 px  (median shorter side 42 px of the first 40 images)" in result.stdout
    assert "s per step (steps 2-4): about " in result.stdout + result.stderr
    saved = json.loads((tmp_path / "run" / "training_args.json").read_text())
    assert saved["image_size"] == 48 and saved["total_batch_size"] <= 8
