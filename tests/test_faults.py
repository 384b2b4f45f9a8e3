"""Fault injection against the real CLI (`python trainers/pretrain.py ...` in subprocesses).

Kill -9 during a step, while a checkpoint is written and while old checkpoints are pruned, then
resume: the result equals an uninterrupted run. Truncated or emptied checkpoint files: the run
falls back to an intact checkpoint or exits 2 naming the file. Corrupt data (0 %, 50 %, 100 %):
exact skipped counts, or exit 2 with one line. Reused folders, changed arguments on resume and
pickles planted in a checkpoint: refused or ignored, never a raw traceback, never unpickled.

Faults are injected by a `sitecustomize` module put on PYTHONPATH (it patches one function of the
checkpointing / loop modules to SIGKILL the process at a chosen point); the CLI itself is unchanged.
Tiny settings: vit-micro at 32 px, 4 images per step, 8 steps, no DataLoader workers except where
a worker is the point.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from hf_ssl.data import load_default_dataset
from resume_cases import CHANGED_FLAGS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "trainers" / "pretrain.py"
MAX_STEPS = 8
INJECTED = Counter()  # fault kind -> faults injected
SURVIVED = Counter()  # fault kind -> faults the CLI handled as required (the test's checks passed)

FAULT_INJECTOR = textwrap.dedent('''
    """Test-only fault injection for trainers/pretrain.py, driven by HF_SSL_TEST_FAULT."""
    import os
    import signal
    from pathlib import Path

    kind, _, argument = os.environ["HF_SSL_TEST_FAULT"].partition(":")

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == "step":  # during optimizer step N: after its batch was drawn, before forward/backward
        import hf_ssl.training.loop as loop
        original_inputs, calls = loop.model_inputs, [0]

        def model_inputs(batch):
            calls[0] += 1
            if calls[0] == int(argument):
                die()
            return original_inputs(batch)

        loop.model_inputs = model_inputs
    elif kind == "write":  # file NAME of checkpoint STEP only half on disk when the process dies
        import hf_ssl.training.checkpointing as checkpointing
        step, name = argument.split(":")
        original_make_durable = checkpointing._make_durable

        def make_durable(path):
            if Path(path).name == name and Path(path).parent.name == f".tmp-checkpoint-{step}":
                os.truncate(path, os.path.getsize(path) // 2)
                die()
            return original_make_durable(path)

        checkpointing._make_durable = make_durable
    elif kind == "prune":  # while deleting checkpoint STEP: one file gone, the rest still there
        import shutil
        original_rmtree = shutil.rmtree

        def rmtree(path, *arguments, **keywords):
            if Path(path).name in (f"checkpoint-{argument}", f".tmp-removing-checkpoint-{argument}"):
                Path(path, "model.safetensors").unlink()
                die()
            return original_rmtree(path, *arguments, **keywords)

        shutil.rmtree = rmtree
''')


def _environment(fault: str | None = None, injector_dir: Path | None = None) -> dict:
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    environment.pop("OMP_NUM_THREADS", None)
    if fault is not None:
        environment["HF_SSL_TEST_FAULT"] = fault
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(injector_dir), environment.get("PYTHONPATH")]))
    return environment


def _run(arguments: list[str], fault: str | None = None, injector_dir: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], cwd=ROOT, env=_environment(fault, injector_dir),
        capture_output=True, text=True, timeout=600,
    )


def _png(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _write_parquet(path: Path, cells: list[dict]) -> str:
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": cells}, features=features).to_parquet(str(path))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Three parquet files from 16 digits: good (0 % corrupt), half (every second row corrupt), bad (100 %)."""
    folder = tmp_path_factory.mktemp("data")
    good = [_png(image) for image in load_default_dataset("train").select(range(16))["image"]]
    corrupt = {"bytes": b"not an image", "path": None}
    return {
        "good": _write_parquet(folder / "good.parquet", good),
        "half": _write_parquet(folder / "half.parquet", [cell for image in good for cell in (image, corrupt)]),
        "bad": _write_parquet(folder / "bad.parquet", [corrupt] * 32),
        "cache": str(folder / "cache"),
    }


def _arguments(data: dict, output_dir: Path, kind: str = "half", *extra: str) -> list[str]:
    # --shuffle_buffer_size 1 and no workers: rows are read in file order, so skipped counts are known.
    return [
        "--dataset_name", "parquet", "--data_files", data[kind], "--cache_dir", data["cache"],
        "--model", "vit-micro", "--image_size", "32", "--max_steps", str(MAX_STEPS), "--total_batch_size", "4",
        "--logging_steps", "1", "--save_steps", "2", "--save_total_limit", "2", "--shuffle_buffer_size", "1",
        "--dataloader_num_workers", "0", "--tokenizer_fit_batches", "1", "--report_to", "none",
        "--output_dir", str(output_dir), *extra,
    ]


def _log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "training_log.jsonl").read_text().splitlines()]


def _expected_skipped(step: int) -> int:
    """Rows alternate good/corrupt (32 rows, 16 good, batch 4): before the 4s-th good row of the run
    lie 4s - 1 corrupt rows; the epoch's trailing corrupt row is counted with the next epoch's first batch."""
    return 4 * step - 1


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def _injected(kind: str, count: int = 1) -> None:
    INJECTED[kind] += count


def _survived(kind: str, count: int = 1) -> None:
    SURVIVED[kind] += count


@pytest.fixture(scope="module", autouse=True)
def fault_report(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and INJECTED:
        lines = [f"  {kind}: {SURVIVED[kind]}/{INJECTED[kind]} survived" for kind in sorted(INJECTED)]
        reporter.write_line(f"\nfaults injected: {sum(INJECTED.values())}, survived: {sum(SURVIVED.values())}\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted run on the half-corrupt data (checkpoints 6 and 8 remain)."""
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    result = _run(_arguments(data, output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def _copy_run(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


# ----------------------------------------------------------------------------- kill -9, then resume


def test_kill_at_every_point_then_resume_equals_the_uninterrupted_run(data, reference, tmp_path):
    injector = tmp_path / "injector"
    injector.mkdir()
    (injector / "sitecustomize.py").write_text(FAULT_INJECTOR)
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    resume = ["--resume_from_checkpoint", "latest"]
    # every corrupt row is counted, including those after a worker's last batch of an epoch
    reference_skipped = [record["skipped_samples"] for record in _log(reference)]
    assert reference_skipped == [_expected_skipped(step) for step in range(1, MAX_STEPS + 1)]

    killed = _run(_arguments(data, run), fault="step:3", injector_dir=injector)  # during step 3
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]
    _injected("kill -9 during a step")

    killed = _run(_arguments(data, run, "half", *resume), fault="write:4:optimizer.safetensors", injector_dir=injector)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in checkpoints.iterdir()) == [".tmp-checkpoint-4", "checkpoint-2"]
    _injected("kill -9 while writing a checkpoint")

    killed = _run(_arguments(data, run, "half", *resume), fault="prune:2", injector_dir=injector)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert {"checkpoint-4", "checkpoint-6"} <= {p.name for p in checkpoints.iterdir()}
    assert not (checkpoints / "checkpoint-2").exists()  # never a half-deleted folder under a checkpoint name
    _injected("kill -9 while pruning checkpoints")

    # and the newest checkpoint damaged on top: the resume falls back to checkpoint-4
    _injected("50 % corrupt data (exact counts across kills)")
    model_file = checkpoints / "checkpoint-6" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    resumed = _run(_arguments(data, run, "half", *resume))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-6 is damaged: model.safetensors is truncated" in resumed.stderr
    assert "Resumed from" in resumed.stderr and "checkpoint-4 at step 4" in resumed.stderr
    _injected("truncated newest checkpoint (fallback)")

    expected, actual = _log(reference), _log(run)
    assert [record["step"] for record in actual] == list(range(1, MAX_STEPS + 1))
    for key in ("loss", "learning_rate", "num_images_seen", "epoch", "skipped_samples"):
        assert [record[key] for record in actual] == [record[key] for record in expected], key
    reference_weights, resumed_weights = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert reference_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(reference_weights[name], resumed_weights[name]) for name in reference_weights)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-6", "checkpoint-8"]
    assert json.loads((run / "training_args.json").read_text())["skipped_samples"] == _expected_skipped(MAX_STEPS)
    for kind in ("kill -9 during a step", "kill -9 while writing a checkpoint", "kill -9 while pruning checkpoints",
                 "truncated newest checkpoint (fallback)", "50 % corrupt data (exact counts across kills)"):
        _survived(kind)


# ----------------------------------------------------------------------------- damaged checkpoint files

CHECKPOINT_FILES = [
    "model.safetensors", "optimizer.json", "optimizer.safetensors", "random_states_0.json",
    "random_states_0.safetensors", "data_state_0.json", "trainer_state.json", "run_arguments.json", "manifest.json",
]


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_truncated_or_empty_file_in_every_checkpoint_is_named(data, reference, tmp_path, name):
    run = _copy_run(reference, tmp_path / "run")
    newest, older = run / "checkpoints" / "checkpoint-8" / name, run / "checkpoints" / "checkpoint-6" / name
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    older.write_bytes(b"")
    _injected("truncated or emptied checkpoint file", 2)
    result = _run(_arguments(data, run, "half", "--resume_from_checkpoint", "latest"))
    error = _one_error_line(result)
    assert f"checkpoint-8 is damaged: {name} " in error and "no older checkpoint is intact" in error
    assert f"checkpoint-6 is damaged: {name} " in result.stderr  # the warning for the older one
    if name != "manifest.json":
        assert "truncated" in error and f"checkpoint-6 is damaged: {name} is empty" in result.stderr
    _survived("truncated or emptied checkpoint file", 2)


# ----------------------------------------------------------------------------- corrupt data


def test_every_row_corrupt_exits_2_with_one_line(data, tmp_path):
    _injected("100 % corrupt data")
    result = _run(_arguments(data, tmp_path / "run", "bad", "--dataloader_num_workers", "1"))
    error = _one_error_line(result)
    assert "produced no batch of 4 rows" in error and "32 undecodable" in error
    _survived("100 % corrupt data")


# ----------------------------------------------------------------------------- run folder protection


def test_reusing_a_run_folder_without_flags_exits_2_and_changes_nothing(data, reference, tmp_path):
    run = _copy_run(reference, tmp_path / "run")
    before = _files(run)
    _injected("reused run folder")
    error = _one_error_line(_run(_arguments(data, run, "good")))
    assert f"--output_dir {run} already holds a run" in error and "--overwrite_output_dir" in error
    assert _files(run) == before
    _survived("reused run folder")


def test_overwrite_output_dir_starts_a_clean_run(data, reference, tmp_path):
    run = _copy_run(reference, tmp_path / "run")
    (run / "eval_results.json").write_text(json.dumps({"knn": {"accuracy": 0.99}}))  # a stale result
    (run / "notes.txt").write_text("the user's own file")
    _injected("--overwrite_output_dir over a finished run")
    result = _run([*_arguments(data, run, "good", "--overwrite_output_dir"), "--max_steps", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert [record["step"] for record in _log(run)] == [1, 2, 3, 4]
    assert [record["skipped_samples"] for record in _log(run)] == [0, 0, 0, 0]  # 0 % corrupt data
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert not (run / "eval_results.json").exists() and "0.99" not in (run / "README.md").read_text()
    assert (run / "notes.txt").read_text() == "the user's own file"
    assert json.loads((run / "training_args.json").read_text())["max_steps"] == 4
    _survived("--overwrite_output_dir over a finished run")


def test_changing_any_must_not_change_argument_on_resume_exits_2_naming_it(data, reference, tmp_path):
    run = _copy_run(reference, tmp_path / "run")
    before = _files(run)
    changed = [flag for flags in CHANGED_FLAGS.values() for flag in flags]
    _injected("argument changed on resume", len(CHANGED_FLAGS))
    result = _run([*_arguments(data, run, "half", "--resume_from_checkpoint", "latest"), *changed])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr[result.stderr.index("error: cannot resume"):]
    for field in CHANGED_FLAGS:
        assert f"\n  --{field}: saved " in message, field
        _survived("argument changed on resume")
    assert _files(run) == before


def test_an_unusable_output_dir_is_refused_before_any_data_is_read(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    missing_data = ["--dataset_name", "parquet", "--data_files", str(tmp_path / "missing.parquet"), "--max_steps", "2"]
    for output_dir, message in ((tmp_path / "file", "is a file, not a folder"), ("/proc/hf-ssl-run", "is not writable")):
        _injected("unusable --output_dir")
        error = _one_error_line(_run([*missing_data, "--output_dir", str(output_dir)]))
        assert message in error  # not the missing data file: the folder is checked first
        _survived("unusable --output_dir")


# ----------------------------------------------------------------------------- planted pickles


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_planted_in_a_checkpoint_are_never_executed(data, reference, tmp_path):
    marker = tmp_path / "payload-ran"
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)  # torch's own format, which torch.load(weights_only=False) runs
    payload = buffer.getvalue()
    run = _copy_run(reference, tmp_path / "run")
    checkpoint = run / "checkpoints" / "checkpoint-8"
    # where hf-ssl used to keep each process's data position (read with torch.load(weights_only=False))
    for name in ("data_state_0.pt", "pytorch_model.bin", "scheduler.bin"):
        (checkpoint / name).write_bytes(payload)
    _injected("pickles planted next to a checkpoint")
    resumed = _run(_arguments(data, run, "half", "--resume_from_checkpoint", "latest"))
    assert not marker.exists(), "a pickle planted in the checkpoint was executed"
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _survived("pickles planted next to a checkpoint")

    for name in ("random_states_0.pkl", "optimizer.bin"):
        (checkpoint / name).write_bytes(payload)
    (checkpoint / "manifest.json").unlink()  # now it looks like an old (accelerate, pickle) checkpoint
    (run / "checkpoints" / "checkpoint-6" / "manifest.json").unlink()
    _injected("pickle-only checkpoint")
    error = _one_error_line(_run(_arguments(data, run, "half", "--resume_from_checkpoint", str(checkpoint))))
    assert "manifest.json is missing: the checkpoint holds pickle files (data_state_0.pt, optimizer.bin" in error
    assert not marker.exists()
    _survived("pickle-only checkpoint")
