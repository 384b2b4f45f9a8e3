"""Fault injection against the real CLI (`python trainers/pretrain.py ...` in subprocesses).

Kill -9 during a step, while a checkpoint is written and while old checkpoints are pruned, then
resume: the result equals an uninterrupted run. SIGTERM and SIGINT (to the process, or to its
whole group as Ctrl-C does) at random moments, repeated, or sent to one process of two: a
checkpoint at the step every process stops at, one line, exit 143 / 130, and the resumed run
equals the uninterrupted one. A full disk at each kind of write (checkpoint files, the training
log, the run folder, the card) and a torn log line: one line, nothing half-written kept, the same
result after resuming. Truncated or emptied checkpoint files: the run falls back to an intact
checkpoint or exits 2 naming the file. Corrupt data (0 %, 50 %, 100 %), 16-bit, transparent,
EXIF-rotated and decompression-bomb images: exact skipped counts, or exit 2 with one line. Reused
folders, two runs into one folder, changed arguments or schedules on resume, pickles planted in a
checkpoint, unusable --model folders, and links and pickles in a pushed folder: refused, ignored
or left out, never a raw traceback, never unpickled, never uploaded.

Faults are injected by a `sitecustomize` module put on PYTHONPATH (it patches one function of the
checkpointing / loop modules or the writers, to SIGKILL the process, stall a step or run out of
disk space at a chosen point); the CLI itself is unchanged. Tiny settings: vit-micro at 32 px, 4
images per step, 8 steps, no DataLoader workers except where a worker is the point.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from hf_ssl.data import load_default_dataset
from hf_ssl.training import verify_checkpoint
from hf_ssl.training.interruption import REPEAT_WINDOW_S, RunInterrupted, StopRequests
from resume_cases import CHANGED_FLAGS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "trainers" / "pretrain.py"
MAX_STEPS = 8
INJECTED = Counter()  # fault kind -> faults injected
SURVIVED = Counter()  # fault kind -> faults the CLI handled as required (the test's checks passed)
LOCK_NAME = ".hf-ssl-run.lock"

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
    elif kind == "stall":  # step N waits until the file RELEASE exists (a long step, to act during it)
        import time
        import hf_ssl.training.loop as loop
        step, release = argument.split(":", 1)
        original_inputs, calls = loop.model_inputs, [0]

        def model_inputs(batch):
            calls[0] += 1
            if calls[0] == int(step):
                Path(release + ".waiting").touch()
                while not Path(release).exists():
                    time.sleep(0.1)
            return original_inputs(batch)

        loop.model_inputs = model_inputs
    elif kind == "enospc":  # the Nth write of a file whose path ends with TARGET gets half its bytes, then ENOSPC
        import builtins
        import errno
        import io
        import safetensors.torch as safetensors_torch
        from safetensors import SafetensorError

        target, _, nth = argument.partition("@")
        writes = [0]

        def hit(path):
            if not str(path).endswith(target):
                return False
            writes[0] += 1
            return writes[0] == int(nth or 1)

        def no_space(path):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        original_serialize_file = safetensors_torch.serialize_file

        def serialize_file(tensors, filename, *arguments, **keywords):  # safetensors' Rust writer, as it fails
            original_serialize_file(tensors, filename, *arguments, **keywords)
            if hit(filename):
                os.truncate(filename, os.path.getsize(filename) // 2)
                raise SafetensorError(
                    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
                )

        safetensors_torch.serialize_file = serialize_file

        class FullDisk:  # a text or binary file object whose write stops half-way
            def __init__(self, handle, path):
                self.handle, self.path = handle, path

            def write(self, data):
                self.handle.write(data[: len(data) // 2])
                self.handle.flush()
                raise no_space(self.path)

            def __getattr__(self, name):
                return getattr(self.handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exception):
                self.handle.close()

        original_open = builtins.open

        def open_(file, mode="r", *arguments, **keywords):
            handle = original_open(file, mode, *arguments, **keywords)
            return FullDisk(handle, file) if ("w" in mode or "a" in mode) and hit(file) else handle

        builtins.open = io.open = open_
        original_write = os.write

        def write(descriptor, data):
            try:
                path = os.readlink(f"/proc/self/fd/{descriptor}")
            except OSError:
                path = ""
            if hit(path):
                original_write(descriptor, bytes(data)[: len(data) // 2])
                raise no_space(path)
            return original_write(descriptor, data)

        os.write = write
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


@pytest.fixture
def injector(tmp_path) -> Path:
    folder = tmp_path / "injector"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(FAULT_INJECTOR)
    return folder


class Started:
    """A CLI run in its own process group (a terminal's Ctrl-C signals the whole group); stderr to a file."""

    def __init__(self, arguments: list[str], folder: Path, fault: str | None = None, injector_dir: Path | None = None,
                 command: list[str] | None = None):
        self.stderr_path = folder / f"stderr-{time.monotonic_ns()}.txt"
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [*(command or [sys.executable, str(SCRIPT)]), *arguments], cwd=ROOT,
                env=_environment(fault, injector_dir), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_until(self, condition, what: str, deadline_s: float = 300) -> bool:
        """Poll `condition` until it holds (True) or the process ended first (False)."""
        deadline = time.monotonic() + deadline_s
        while not condition():
            if self.process.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"never happened: {what}\n{self.stderr[-3000:]}"
            time.sleep(0.05)
        return True

    def signal(self, number: int, group: bool = False) -> None:
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, number)
            else:
                self.process.send_signal(number)

    def finish(self) -> int:
        try:
            return self.process.wait(timeout=600)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _log_lines(output_dir: Path) -> int:
    path = output_dir / "training_log.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _stop_line(stderr: str, launcher_tracebacks: int = 0) -> str:
    """The one line an interrupted run ends with (and no traceback but `launcher_tracebacks` of torchrun's)."""
    assert stderr.count("Traceback") == launcher_tracebacks, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("stopped ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _assert_same_run(reference: Path, run: Path) -> None:
    """The training log and the final weights of `run` equal those of `reference`."""
    expected, actual = _log(reference), _log(run)
    assert [record["step"] for record in actual] == list(range(1, MAX_STEPS + 1))
    for key in ("loss", "learning_rate", "num_images_seen", "epoch", "skipped_samples"):
        assert [record[key] for record in actual] == [record[key] for record in expected], key
    reference_weights, weights = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert reference_weights.keys() == weights.keys()
    assert all(torch.equal(reference_weights[name], weights[name]) for name in reference_weights)


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
    """Every file's hash, but the run-folder lock's, which holds the PID of the last run to lock the folder."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file() and p.name != LOCK_NAME}


def _temporary_checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob(".tmp-*")) if (run / "checkpoints").is_dir() else []


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
        injected, survived = sum(INJECTED.values()), sum(SURVIVED.values())
        reporter.write_line(f"\nfaults injected: {injected}, survived: {survived}, lost: {injected - survived}\n"
                            + "\n".join(lines))


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
    assert (run / LOCK_NAME).read_text().strip().isdigit()  # the dead run's PID: the next run must not mind it
    _injected("kill -9 during a step")
    _injected("kill -9 while holding the run-folder lock", 3)

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

    _assert_same_run(reference, run)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-6", "checkpoint-8"]
    assert json.loads((run / "training_args.json").read_text())["skipped_samples"] == _expected_skipped(MAX_STEPS)
    for kind in ("kill -9 during a step", "kill -9 while writing a checkpoint", "kill -9 while pruning checkpoints",
                 "truncated newest checkpoint (fallback)", "50 % corrupt data (exact counts across kills)"):
        _survived(kind)
    _survived("kill -9 while holding the run-folder lock", 3)  # each next run went ahead


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


# ----------------------------------------------------------------------------- SIGTERM / SIGINT

SIGNAL_SEED = 28  # which steps the signals aim at; the moment within the step is the machine's timing


@pytest.fixture(scope="module")
def reference_with_worker(data, tmp_path_factory) -> Path:
    """The uninterrupted run with one DataLoader worker (Ctrl-C also signals the workers)."""
    output_dir = tmp_path_factory.mktemp("reference-worker") / "run"
    result = _run(_arguments(data, output_dir, "half", "--dataloader_num_workers", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def _check_stop(stopped: Started, code: int, run: Path, number: int) -> int:
    """The checks every stopped run passes; returns the step of the checkpoint it stopped with (0: none)."""
    assert code == 128 + number, stopped.stderr[-3000:]
    line = _stop_line(stopped.stderr)
    name = signal.Signals(number).name
    assert line.endswith("to resume, run the same command with --resume_from_checkpoint latest"), line
    if line.startswith(f"stopped by {name} at step "):  # during training: a checkpoint at the step it stopped
        step = int(line.split(" at step ")[1].split(":")[0])
        checkpoint = run / "checkpoints" / f"checkpoint-{step}"
        assert f"checkpoint written to {checkpoint};" in line
        verify_checkpoint(checkpoint)
        assert not _temporary_checkpoints(run)
        assert _log_lines(run) == step
        return step
    assert line.startswith(f"stopped at once by {name}: "), line  # outside training (start-up, final save)
    return 0


def test_sigterm_and_sigint_at_random_moments_then_resume_equals_the_uninterrupted_run(data, reference_with_worker,
                                                                                        tmp_path):
    """SIGTERM ended a run at once without a checkpoint (up to --save_steps - 1 steps lost) and
    Ctrl-C printed a 70-line traceback."""
    randomness = random.Random(SIGNAL_SEED)
    run = tmp_path / "run"
    arguments = _arguments(data, run, "half", "--dataloader_num_workers", "1")
    # (signal, to the whole process group as Ctrl-C does, sent twice at once as launchers forward it)
    interruptions = [(signal.SIGTERM, False, False), (signal.SIGINT, True, False), (signal.SIGTERM, True, True),
                     (signal.SIGINT, False, True)]
    # the first one lands during start-up (data, model): the run folder is locked, usually nothing is trained yet
    started = Started(arguments, tmp_path)
    assert started.wait_until(lambda: (run / LOCK_NAME).is_file(), "the run folder locked")
    started.signal(signal.SIGTERM)
    _injected("SIGTERM during start-up")
    stopped_at = _check_stop(started, started.finish(), run, signal.SIGTERM)
    # The lock comes before the data and the model; on a quick host training may have begun by the
    # time the signal lands (CI saw a stop at step 1): then it is an ordinary deferred stop.
    assert stopped_at <= 3, stopped_at  # still at the very start
    if stopped_at == 0:
        assert "no checkpoint was written yet" in started.stderr
    _survived("SIGTERM during start-up")
    targets = sorted(randomness.sample(range(1, MAX_STEPS), len(interruptions) - 1))  # steps logged before the signal
    for (number, group, twice), target in zip(interruptions[1:], targets):
        kind = f"{signal.Signals(number).name}{' to the process group' if group else ''}{' twice at once' if twice else ''}"
        # past every line already logged: a run stopped at once may have logged steps after its last
        # checkpoint, and the resumed run must be training (not importing) when the signal lands
        target = max(target, stopped_at + 1, _log_lines(run) + 1)
        if target >= MAX_STEPS:
            break
        started = Started([*arguments, "--resume_from_checkpoint", "latest"], tmp_path)
        if not started.wait_until(lambda: _log_lines(run) >= target, f"{target} steps logged"):
            break
        time.sleep(randomness.uniform(0.0, 0.2))  # anywhere in the step: forward, backward, log, checkpoint
        started.signal(number, group)
        if twice:
            started.signal(number, group)
        _injected(kind)
        step = _check_stop(started, started.finish(), run, number)
        assert step >= target or step == 0
        stopped_at = max(stopped_at, step)
        _survived(kind)
    resumed = _run([*arguments, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(reference_with_worker, run)


def test_a_start_up_signal_whose_stop_a_library_swallowed_stops_when_training_begins(tmp_path):
    """CI once saw a SIGTERM sent during start-up end the run at step 1: the immediate stop was
    raised inside code that catches everything, and the loop later found the signal recorded."""
    stop_requests = StopRequests().install()
    stop_requests.output_dir = tmp_path
    try:
        try:  # a library's `except BaseException: pass` around what start-up was doing
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here, in this thread
        except BaseException as swallowed:
            assert isinstance(swallowed, RunInterrupted)
        with pytest.raises(RunInterrupted, match="stopped at once by SIGTERM: no checkpoint was written yet") as stop:
            stop_requests.start_deferring()
        assert stop.value.exit_code == 143 and not stop_requests.deferring
    finally:
        stop_requests.uninstall()


def test_a_second_signal_stops_at_once(data, reference, injector, tmp_path):
    run = tmp_path / "run"
    release = tmp_path / "release"  # never created: step 3 lasts until the second signal ends it
    started = Started(_arguments(data, run), tmp_path, fault=f"stall:3:{release}", injector_dir=injector)
    assert started.wait_until(lambda: Path(f"{release}.waiting").exists(), "step 3 under way")
    started.signal(signal.SIGINT)
    assert started.wait_until(lambda: "SIGINT received: stopping after this step" in started.stderr, "the first SIGINT noted")
    time.sleep(REPEAT_WINDOW_S + 0.5)  # a repeat within the window counts as the same stop
    started.signal(signal.SIGINT)
    _injected("a second SIGINT during a step")
    assert started.finish() == 130
    line = _stop_line(started.stderr)
    assert line == (f"stopped at once by SIGINT: the newest checkpoint is {run / 'checkpoints' / 'checkpoint-2'}; "
                    "to resume, run the same command with --resume_from_checkpoint latest")
    assert sorted(path.name for path in (run / "checkpoints").iterdir() if not path.name.startswith(".tmp")) == ["checkpoint-2"]
    resumed = _run([*_arguments(data, run), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(reference, run)
    _survived("a second SIGINT during a step")


def test_sigterm_to_one_process_of_two_stops_both_at_the_same_step(tmp_path):
    """The checkpoint is collective: a signal only one rank saw must stop every rank at its step."""
    import psutil

    run = tmp_path / "run"
    arguments = ["--model", "vit-micro", "--image_size", "32", "--max_steps", str(MAX_STEPS), "--total_batch_size", "8",
                 "--logging_steps", "1", "--save_steps", "4", "--dataloader_num_workers", "0", "--report_to", "none",
                 "--report_protocols", "none", "--output_dir", str(run)]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT)]
    started = Started(arguments, tmp_path, command=launch)
    assert started.wait_until(lambda: _log_lines(run) >= 2, "2 steps logged")
    ranks = {}
    for child in psutil.Process(started.process.pid).children(recursive=True):
        try:
            ranks[child.environ().get("RANK")] = child
        except psutil.Error:
            continue
    ranks["1"].send_signal(signal.SIGTERM)
    _injected("SIGTERM to one process of two")
    assert started.finish() != 0
    # printed once, by the main process, although rank 1 was signalled; torchrun then reports its
    # workers' non-zero exit codes (143) with a ChildFailedError traceback of its own
    assert "ChildFailedError" in started.stderr and "exitcode  : 143" in started.stderr
    line = _stop_line(started.stderr, launcher_tracebacks=1)
    step = int(line.split(" at step ")[1].split(":")[0])
    checkpoint = run / "checkpoints" / f"checkpoint-{step}"
    assert line.startswith("stopped by SIGTERM at step ") and f"checkpoint written to {checkpoint};" in line
    files = verify_checkpoint(checkpoint)["files"]
    assert {"random_states_0.json", "random_states_1.json", "data_state_0.json", "data_state_1.json"} <= set(files)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == step == _log_lines(run)
    resumed = subprocess.run([*launch, *arguments, "--resume_from_checkpoint", "latest"], cwd=ROOT, env=_environment(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [record["step"] for record in _log(run)] == list(range(1, MAX_STEPS + 1))
    _survived("SIGTERM to one process of two")


# ----------------------------------------------------------------------------- a full disk

# (file whose write runs out of space, what the one-line error says is being written), in the order
# a run meets them; each run is the resume of the one before.
DISK_FULL_WRITES = [
    (".tmp-checkpoint-2/model.safetensors", "checkpoint-2"),
    (".tmp-checkpoint-4/optimizer.json", "checkpoint-4"),
    ("training_log.jsonl@2", "training_log.jsonl (step 4)"),
    (".tmp-checkpoint-6/manifest.json", "checkpoint-6"),
    (".tmp-checkpoint-8/data_state_0.json", "checkpoint-8"),
    ("/run/model.safetensors", "the run folder"),
    ("/run/training_args.json", "the run folder"),
    ("/run/backbone/model.safetensors", "the run folder"),
    ("/run/README.md", "README.md"),
]


def test_a_full_disk_at_each_write_stops_in_one_line_and_resuming_equals_the_uninterrupted_run(data, reference,
                                                                                               injector, tmp_path):
    """A save that hit ENOSPC ended in a raw SafetensorError traceback."""
    run = tmp_path / "run"
    arguments = _arguments(data, run)
    for index, (target, writing) in enumerate(DISK_FULL_WRITES):
        resume = ["--resume_from_checkpoint", "latest"] if index else []
        result = _run([*arguments, *resume], fault=f"enospc:{target}", injector_dir=injector)
        _injected("disk full while writing " + target.split("/")[-1].split("@")[0])
        error = _one_error_line(result)
        if writing == "README.md":  # the card: any write the saves do not name themselves
            assert error.startswith("error: no space left on the device ([Errno 28] No space left on device:"), error
        else:
            folder = run / "checkpoints" if writing.startswith("checkpoint") else run
            assert error.startswith(f"error: no space left on the device holding {folder} while writing {writing}: it "
                                    "needs about "), error
            assert " free. " in error and "run the same command with --resume_from_checkpoint latest" in error
        assert not _temporary_checkpoints(run)  # the partial checkpoint was removed
        for checkpoint in (run / "checkpoints").glob("checkpoint-*"):
            verify_checkpoint(checkpoint)  # nothing half-written under a checkpoint name
        assert all(json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines())  # no torn line
        _survived("disk full while writing " + target.split("/")[-1].split("@")[0])
    resumed = _run([*arguments, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(reference, run)


def test_a_torn_last_log_line_is_dropped_on_resume(data, reference, tmp_path):
    """When the disk filled between checkpoints the log ended mid-record, and every later resume
    crashed with a JSONDecodeError although checkpoint-6 was intact: the run was lost to the CLI."""
    run = _copy_run(reference, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "checkpoint-8")
    log = run / "training_log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # line 8 cut mid-record
    _injected("torn last training-log line")
    resumed = _run([*_arguments(data, run), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "training_log.jsonl: dropped line(s) 8, cut off mid-record" in resumed.stderr
    _assert_same_run(reference, run)
    _survived("torn last training-log line")


# ----------------------------------------------------------------------------- two runs, one folder


def test_two_runs_started_together_into_one_folder_one_is_refused(data, tmp_path):
    """Both were accepted (check, then act): each deleted the other's temporary checkpoint, one died
    with a traceback, and the survivor's log and card mixed two runs' losses."""
    run = tmp_path / "run"
    first, second = (Started(_arguments(data, run, "good"), tmp_path) for _ in range(2))
    codes = {first: first.finish(), second: second.finish()}
    _injected("two runs started together into one folder")
    assert sorted(codes.values()) == [0, 2], {started.process.pid: started.stderr[-2000:] for started in codes}
    winner, loser = (first, second) if codes[first] == 0 else (second, first)
    errors = [line for line in loser.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in loser.stderr, loser.stderr[-3000:]
    # refused by the lock, or, had the winner already finished, by the folder now holding a run
    assert f"is in use by another hf-ssl run (PID {winner.process.pid})" in errors[0] or "already holds a run" in errors[0]
    assert [record["step"] for record in _log(run)] == list(range(1, MAX_STEPS + 1))
    assert [record["skipped_samples"] for record in _log(run)] == [0] * MAX_STEPS
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["checkpoint-6", "checkpoint-8"]
    _survived("two runs started together into one folder")


def test_a_resume_into_a_folder_a_run_is_training_in_is_refused_naming_its_pid(data, reference, injector, tmp_path):
    run = tmp_path / "run"
    release = tmp_path / "release"
    training = Started(_arguments(data, run), tmp_path, fault=f"stall:3:{release}", injector_dir=injector)
    assert training.wait_until(lambda: Path(f"{release}.waiting").exists(), "step 3 under way")
    _injected("a resume into a folder in use")
    error = _one_error_line(_run([*_arguments(data, run), "--resume_from_checkpoint", "latest"]))
    assert error == (f"error: --output_dir {run} is in use by another hf-ssl run (PID {training.process.pid}): wait for "
                     "it to end, or choose another --output_dir")
    release.touch()
    assert training.finish() == 0, training.stderr[-3000:]
    _assert_same_run(reference, run)  # the running one never noticed
    _survived("a resume into a folder in use")


# ----------------------------------------------------------------------------- schedules on resume


@pytest.mark.parametrize("max_steps", [MAX_STEPS + 4, MAX_STEPS // 2])
def test_an_extended_or_shortened_schedule_on_resume_exits_2(data, reference, tmp_path, max_steps):
    """--max_steps 150 on a finished 100-step run jumped the learning rate 34x without warm-up;
    --max_steps 50 trained nothing and labelled the weights 50 steps."""
    run = _copy_run(reference, tmp_path / "run")
    before = _files(run)
    kind = "extended schedule on resume" if max_steps > MAX_STEPS else "shortened schedule on resume"
    _injected(kind)
    result = _run([*_arguments(data, run, "half", "--resume_from_checkpoint", "latest"), "--max_steps", str(max_steps)])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    if max_steps > MAX_STEPS:
        assert f"\n  --max_steps: saved {MAX_STEPS}, given {max_steps}" in result.stderr
        assert "to train longer, start a new run from this one's encoder: --model <run folder>/backbone" in result.stderr
    else:
        error = _one_error_line(result)
        assert f"checkpoint-{MAX_STEPS} is at step {MAX_STEPS}, beyond --max_steps {max_steps}: nothing would be trained" in error
    assert _files(run) == before
    _survived(kind)


# ----------------------------------------------------------------------------- --model folders


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    """--model folders as users bring them (transformers and timm formats; good and unusable)."""
    import timm
    from timm.models import save_for_hf
    from transformers import ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("models")
    tiny = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    folders = {name: root / name for name in ("google-style-vit", "timm", "pickle-vit", "pickle-timm", "bad-header", "huge")}
    ViTModel(ViTConfig(**tiny), add_pooling_layer=False).save_pretrained(folders["google-style-vit"])  # eps 1e-12
    resnet = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    save_for_hf(resnet, folders["timm"], model_args={"num_classes": 10}, safe_serialization=True)
    ViTConfig(**tiny).save_pretrained(folders["pickle-vit"])
    torch.save(ViTModel(ViTConfig(**tiny)).state_dict(), folders["pickle-vit"] / "pytorch_model.bin")
    save_for_hf(resnet, folders["pickle-timm"], model_args={"num_classes": 10})  # timm's default: pickle
    ViTConfig(**tiny).save_pretrained(folders["bad-header"])
    (folders["bad-header"] / "model.safetensors").write_bytes(b"\xff" * 8 + b"not a safetensors header")
    huge = dict(tiny, hidden_size=65536, num_attention_heads=16, intermediate_size=262144, num_hidden_layers=12)
    ViTConfig(**huge).save_pretrained(folders["huge"])  # about 620 billion parameters, 10 TB of training state
    shutil.copy(folders["google-style-vit"] / "model.safetensors", folders["huge"] / "model.safetensors")
    return folders


UNUSABLE_MODELS = {
    "pickle-vit": "holds only pickle weights (pytorch_model.bin), which hf-ssl never loads",
    "pickle-timm": "holds only pickle weights (pytorch_model.bin), which hf-ssl never loads",
    "bad-header": "model.safetensors is not a readable safetensors file",
    "huge": "billion parameters: training it needs at least",
}


@pytest.mark.parametrize("name", sorted(UNUSABLE_MODELS))
def test_an_unusable_model_folder_exits_2_before_training(data, model_folders, tmp_path, name):
    """Pickle-only folders trained silently from random init; a bad header was a raw SafetensorError;
    a config of a ~150 GB model was stopped only by memory."""
    _injected(f"--model folder: {name}")
    error = _one_error_line(_run(_arguments(data, tmp_path / "run", "good", "--model", str(model_folders[name]))))
    assert UNUSABLE_MODELS[name] in error
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    _survived(f"--model folder: {name}")


@pytest.mark.parametrize("name", ["timm", "google-style-vit"])
def test_model_folders_as_timm_and_transformers_save_them_train_to_a_complete_run_folder(data, model_folders, tmp_path, name):
    """timm's own folder exited 2 ("multiple values for keyword argument 'num_classes'"); a ViT with
    transformers' LayerNorm eps 1e-12 trained, then lost training_args.json, card and push to the timm export."""
    run = tmp_path / "run"
    _injected(f"--model folder: {name}")
    result = _run([*_arguments(data, run, "good", "--model", str(model_folders[name])), "--max_steps", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Backbone initialised from {model_folders[name]}" in result.stderr
    for file in ("training_args.json", "README.md", "backbone/model.safetensors", "config.json"):
        assert (run / file).is_file(), file
    if name == "google-style-vit":
        assert "backbone_timm/ not written, timm has no equivalent of this encoder" in result.stderr
        assert not (run / "backbone_timm").exists()
    _survived(f"--model folder: {name}")


# ----------------------------------------------------------------------------- images as they come


def _rotated_jpeg(image, orientation: int) -> dict:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    return {"bytes": buffer.getvalue(), "path": None}


def test_16_bit_transparent_exif_rotated_and_bomb_images_train_with_exact_skipped_counts(data, tmp_path):
    """A 16-bit PNG decoded white in evaluation, transparency went black, an EXIF-rotated photo was
    trained sideways, and a small single-colour 12000 x 12000 PNG was decoded in every worker."""
    import numpy as np
    from PIL import Image

    digits = load_default_dataset("train").select(range(16))["image"]
    cells = [_png(image) for image in digits]
    grey = np.asarray(digits[3].convert("L"), dtype=np.uint16)
    cells[3] = _png(Image.fromarray(grey * 257))  # 16-bit grey
    cells[5] = _png(digits[5].convert("RGBA"))
    cells[7] = _rotated_jpeg(digits[7], orientation=6)
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000), 1).save(bomb, format="PNG")
    parquet = _write_parquet(tmp_path / "awkward.parquet", [{"bytes": bomb.getvalue(), "path": None}, *cells])
    run = tmp_path / "run"
    arguments = ["--dataset_name", "parquet", "--data_files", parquet, *_arguments(data, run, "good")[4:]]
    for kind in ("16-bit PNG", "transparent PNG", "EXIF-rotated JPEG", "decompression bomb"):
        _injected(kind)
    result = _run(arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    # the bomb is the first row of each epoch (16 good rows = 4 batches): skipped once per epoch
    assert [record["skipped_samples"] for record in _log(run)] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert "above the 64,000,000-pixel decoding limit" in result.stderr
    for kind in ("16-bit PNG", "transparent PNG", "EXIF-rotated JPEG", "decompression bomb"):
        _survived(kind)


# ----------------------------------------------------------------------------- links and pickles in a push


def test_push_uploads_no_link_target_and_no_pickle(reference, tmp_path, monkeypatch):
    """`hf-ssl push` uploaded the targets of links to /etc/passwd and to the user's own Hub token,
    and pickle files other than *.bin/*.pt/*.pth/*.ckpt, to a public repo by default."""
    from huggingface_hub import constants

    from hf_ssl.hub import push_run_folder
    from hub_server import HubServer

    token = "hf_faultsecret_0123456789abcdefABCDEF"
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "token").write_text(token)
    (outside / "folder" / "notes.md").write_text("private notes")
    run = _copy_run(reference, tmp_path / "run")
    planted = {"passwd.txt": outside / "passwd", "token.json": outside / "token", "linked": outside / "folder"}
    for name, target in planted.items():
        (run / name).symlink_to(target, target_is_directory=target.is_dir())
    (run / "backbone" / "token.md").symlink_to(outside / "token")
    pickles = ("features.pkl", "state.pickle", "pytorch_model.bin")
    for name in pickles:
        (run / name).write_bytes(b"\x80\x04pickle")
    kinds = ["symbolic link to a file outside"] * 3 + ["symbolic link to a folder outside"] + ["pickle file"] * 3
    for kind in kinds:
        _injected(kind)
    with HubServer(expected_token=token, lifetime_s=120) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # only 127.0.0.1 is reachable
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(outside / "token"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        push_run_folder(run, "org/run")
        received, received_backbone = hub.files("org/run"), hub.files("org/run-backbone")
    assert {"config.json", "model.safetensors", "README.md", "modeling_simclr.py"} <= set(received)
    assert not set(planted) & {path.split("/")[0] for path in received}
    assert not set(pickles) & set(received) and "token.md" not in received_backbone
    for content in [*received.values(), *received_backbone.values()]:
        assert token.encode() not in content and b"root:x:0:0" not in content and b"private notes" not in content
    for kind in kinds:
        _survived(kind)
