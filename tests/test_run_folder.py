"""Run-folder protection: reuse, overwrite and resume rules, and the arguments a resume must keep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_ssl.training import (
    ConfigurationError,
    DamagedCheckpointError,
    check_output_dir,
    check_resume_arguments,
    check_run_folder,
    parse_arguments,
    prepare_output_dir,
    resolve_arguments,
    resume_arguments,
)
from hf_ssl.training.checkpointing import RUN_ARGUMENTS_NAME, TRAINER_STATE_NAME, write_manifest
from hf_ssl.training.run_folder import RESUME_INVARIANT_FIELDS
from resume_cases import CHANGED_FLAGS


def _finished_run(folder: Path, step: int = 4, run_arguments: dict | None = None) -> Path:
    """The files a finished run leaves, with one checkpoint (manifest included)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "training_args.json", "eval_results.json"):
        (folder / name).write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "training_log.jsonl").write_text(json.dumps({"step": step}) + "\n")
    (folder / "modeling_splitmask.py").write_text("# copied remote code\n")
    (folder / "hf_ssl_losses_contrastive.py").write_text("# copied library module\n")
    (folder / "backbone").mkdir()
    (folder / "backbone" / "config.json").write_text("{}")
    checkpoint = folder / "checkpoints" / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / TRAINER_STATE_NAME).write_text(json.dumps({"step": step, "world_size": 1}))
    if run_arguments is not None:
        (checkpoint / RUN_ARGUMENTS_NAME).write_text(json.dumps(run_arguments))
    write_manifest(checkpoint)
    return checkpoint


def test_a_file_or_an_unwritable_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(ConfigurationError, match="file, not a folder"):
        check_output_dir(tmp_path / "file" / "run")
    # /proc accepts no new files, even for root
    with pytest.raises(ConfigurationError, match="is not writable"):
        check_output_dir("/proc/hf-ssl-test-run")
    check_output_dir(tmp_path / "new" / "run")  # a folder to be created is fine
    assert not (tmp_path / "new").exists()  # checked, not created


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    checkpoint = _finished_run(run)
    with pytest.raises(ConfigurationError, match=r"already holds a run \(config\.json, model\.safetensors, training_log\.jsonl, "
                                                 r"training_args\.json, eval_results\.json, checkpoints/\).*--overwrite_output_dir"):
        check_output_dir(run)
    check_output_dir(run, overwrite=True)
    check_output_dir(run, resume="latest")
    check_output_dir(run, resume=str(checkpoint))
    with pytest.raises(ConfigurationError, match="choose one"):
        check_output_dir(run, overwrite=True, resume="latest")
    with pytest.raises(ConfigurationError, match="would delete --resume_from_checkpoint"):
        check_output_dir(run, overwrite=True, resume=str(checkpoint))
    other = _finished_run(tmp_path / "other")
    with pytest.raises(ConfigurationError, match="belongs to another folder"):
        check_output_dir(run, resume=str(other))
    check_output_dir(tmp_path / "empty", resume=str(other))  # resuming another run's checkpoint into a new folder
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "notes.txt").write_text("mine")
    check_output_dir(tmp_path / "unrelated")


def test_finished_run_without_checkpoints_has_nothing_to_resume(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    for path in sorted((run / "checkpoints").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    with pytest.raises(ConfigurationError, match="finished run without checkpoints"):
        check_output_dir(run, resume="latest")


def test_overwrite_removes_the_previous_runs_files_only(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    (run / "notes.txt").write_text("the user's own file")
    removed = prepare_output_dir(run, overwrite=True)
    assert {path.name for path in removed} >= {"config.json", "checkpoints", "backbone", "eval_results.json",
                                               "modeling_splitmask.py", "hf_ssl_losses_contrastive.py"}
    assert sorted(path.name for path in run.iterdir()) == ["notes.txt"]
    assert prepare_output_dir(tmp_path / "fresh") == [] and (tmp_path / "fresh").is_dir()


def _arguments(*flags: str):
    return resolve_arguments(parse_arguments(list(flags))[0])


def test_every_invariant_field_is_checked():
    assert set(CHANGED_FLAGS) | {"world_size", "method_arguments"} == set(RESUME_INVARIANT_FIELDS)


def test_changing_a_methods_own_flag_is_refused():
    import dataclasses

    @dataclasses.dataclass
    class Flags:
        local_crops_number: int = 6
        scale: tuple = (0.05, 0.4)

    saved = json.loads(json.dumps(resume_arguments(_arguments(), 1, method_arguments=Flags())))  # as read from disk
    check_resume_arguments(saved, resume_arguments(_arguments(), 1, method_arguments=Flags()))
    with pytest.raises(ConfigurationError, match="--method_arguments: saved"):
        check_resume_arguments(saved, resume_arguments(_arguments(), 1, method_arguments=Flags(local_crops_number=8)))


@pytest.mark.parametrize("field", sorted(CHANGED_FLAGS))
def test_changing_a_must_not_change_argument_is_refused(tmp_path, field):
    base = ["--output_dir", str(tmp_path / "run")]
    saved = resume_arguments(_arguments(*base), world_size=1)
    given = resume_arguments(_arguments(*base, *CHANGED_FLAGS[field]), world_size=1)
    with pytest.raises(ConfigurationError) as error:
        check_resume_arguments(saved, given)
    lines = str(error.value).splitlines()
    assert lines[0].startswith("cannot resume: ")
    expected = f"  --{field}: saved {json.dumps(saved[field])}, given {json.dumps(given[field])}"
    assert expected in lines  # (a dataset flag also changes dataset-dependent defaults: more lines then)


def test_same_arguments_and_json_formatting_pass():
    saved = resume_arguments(_arguments("--model_overrides", '{"mask_ratio": 0.5}', "--max_steps", "10"), world_size=2)
    given = resume_arguments(_arguments("--model_overrides", '{ "mask_ratio":0.5 }', "--max_steps", "10"), world_size=2)
    check_resume_arguments(saved, given)  # overrides compare as JSON
    with pytest.raises(ConfigurationError, match=r"--world_size: saved 2, given 1"):
        check_resume_arguments(saved, resume_arguments(_arguments("--max_steps", "10", "--model_overrides", '{"mask_ratio": 0.5}'), 1))


def test_a_resume_keeps_the_schedule_it_started_with():
    """A finished 100-step run resumed with --max_steps 150 restarted its cosine at 34x its last
    learning rate, without warm-up, and its card described a schedule that was not used."""
    saved = resume_arguments(_arguments("--max_steps", "100"), world_size=1)
    assert saved["learning_rate"] == 5e-4 and saved["warmup_steps"] > 0  # resolved values, not the None of the flags
    check_resume_arguments(saved, resume_arguments(_arguments("--max_steps", "100", "--learning_rate", "5e-4"), 1))
    for flags in (["--max_steps", "150"], ["--max_steps", "50"], ["--max_steps", "100", "--warmup_steps", "20"]):
        with pytest.raises(ConfigurationError, match=r"(?s)cannot resume: \d argument\(s\) differ.*to train longer, start a "
                                                     r"new run from this one's encoder: --model <run folder>/backbone"):
            check_resume_arguments(saved, resume_arguments(_arguments(*flags), 1))
    recorded_before = {name: value for name, value in saved.items() if name not in ("max_steps", "learning_rate",
                                                                                    "weight_decay", "warmup_steps")}
    check_resume_arguments(recorded_before, resume_arguments(_arguments("--max_steps", "150"), 1))  # not recorded: unchecked


def test_a_checkpoint_beyond_max_steps_is_refused(tmp_path):
    run = tmp_path / "run"
    arguments = _arguments("--output_dir", str(run), "--resume_from_checkpoint", "latest", "--max_steps", "3")
    _finished_run(run, step=4)  # written without run arguments, as older checkpoints were
    with pytest.raises(ConfigurationError, match=r"checkpoint-4 is at step 4, beyond --max_steps 3: nothing would be trained"):
        check_run_folder(arguments, world_size=1)


def test_check_run_folder_resolves_verifies_and_compares(tmp_path, caplog):
    run = tmp_path / "run"
    arguments = _arguments("--output_dir", str(run), "--resume_from_checkpoint", "latest")
    assert check_run_folder(arguments, world_size=1) is None  # nothing yet: fresh start
    older = _finished_run(run, step=2, run_arguments=resume_arguments(arguments, 1))
    newer = run / "checkpoints" / "checkpoint-4"
    newer.mkdir()
    (newer / TRAINER_STATE_NAME).write_text("{}")
    (newer / RUN_ARGUMENTS_NAME).write_text("{}")
    write_manifest(newer)
    (newer / RUN_ARGUMENTS_NAME).write_text("")  # emptied after the save
    assert check_run_folder(arguments, world_size=1) == older
    assert "run_arguments.json is empty" in caplog.text
    explicit = _arguments("--output_dir", str(run), "--resume_from_checkpoint", str(newer))
    with pytest.raises(DamagedCheckpointError, match="checkpoint-4 is damaged: run_arguments.json is empty"):
        check_run_folder(explicit, world_size=1)
    changed = _arguments("--output_dir", str(run), "--resume_from_checkpoint", "latest", "--seed", "5")
    with pytest.raises(ConfigurationError, match="--seed: saved 0, given 5"):
        check_run_folder(changed, world_size=1)


# ----- one run per folder (run_lock)

HOLD_LOCK = """
import os, sys, time
from hf_ssl.training.run_lock import lock_run_folder
lock = lock_run_folder(sys.argv[1])
if len(sys.argv) > 2 and os.fork() == 0:  # a forked child (a DataLoader worker) outlives its parent
    time.sleep(120)
    os._exit(0)
print("locked", flush=True)
if len(sys.argv) > 2:
    os._exit(0)
time.sleep(120)
"""


def _hold_lock(folder: Path, *extra: str):
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), *extra], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_folder_locked_by_a_live_run_is_refused_naming_its_pid_and_freed_by_kill_9(tmp_path):
    import signal

    from hf_ssl.training.run_lock import lock_run_folder

    holder = _hold_lock(tmp_path / "run")
    try:
        with pytest.raises(ConfigurationError, match=rf"--output_dir {tmp_path / 'run'} is in use by another hf-ssl run "
                                                     rf"\(PID {holder.pid}\)"):
            lock_run_folder(tmp_path / "run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = lock_run_folder(tmp_path / "run")  # no stale lock after kill -9
    with pytest.raises(ConfigurationError, match="in use by another hf-ssl run"):
        lock_run_folder(tmp_path / "run")  # another lock, even in the same process
    lock.release()
    lock_run_folder(tmp_path / "run").release()


def test_a_forked_worker_does_not_keep_its_dead_parents_lock(tmp_path):
    import os
    import signal

    import psutil

    from hf_ssl.training.run_lock import lock_run_folder

    parent = _hold_lock(tmp_path / "run", "fork")
    parent.wait()
    children = [process for process in psutil.process_iter(["cmdline"]) if process.info["cmdline"]
                and str(tmp_path / "run") in process.info["cmdline"] and process.pid != parent.pid]
    try:
        assert len(children) == 1  # the forked child still runs
        lock_run_folder(tmp_path / "run").release()
    finally:
        for child in children:
            os.kill(child.pid, signal.SIGKILL)
        psutil.wait_procs(children, timeout=10)


def test_an_unusable_folder_is_named_before_locking(tmp_path):
    from hf_ssl.training.run_lock import lock_run_folder

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigurationError, match="is a file, not a folder"):
        lock_run_folder(tmp_path / "file")
