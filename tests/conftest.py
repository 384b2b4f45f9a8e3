"""Shared pytest set-up: offline Hub, the --run-slow switch, and a guard against leftover processes."""

from __future__ import annotations

import gc
import os
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A process a test starts that aborts (a signal in C++ code) prints every thread's Python stack.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
# Every process a test starts inherits this marker (subprocess environments are built from
# os.environ), so a leftover is found even after its parent died and it was re-parented.
SESSION_MARKER = "PYTEST_PROCESS_GUARD_HF_SSL"
os.environ[SESSION_MARKER] = uuid.uuid4().hex

import psutil  # noqa: E402
import pytest  # noqa: E402

LEFTOVER_GRACE_S = 10.0


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def marked_processes() -> dict[int, psutil.Process]:
    """Live processes (not zombies) other than this one that carry this session's marker."""
    marker = f"{SESSION_MARKER}={os.environ[SESSION_MARKER]}".encode()
    found = {}
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            with open(f"/proc/{process.pid}/environ", "rb") as handle:
                if marker not in handle.read().split(b"\0"):
                    continue
            if process.status() != psutil.STATUS_ZOMBIE:
                found[process.pid] = process
        except (OSError, psutil.Error):
            continue  # gone meanwhile, or not ours to read
    return found


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {process.pid}"


def leftover_processes(before: set[int]) -> list[str]:
    """Processes started since `before` that are still running after a grace period; they are killed."""
    new = [process for pid, process in marked_processes().items() if pid not in before]
    if not new:
        return []  # the common case; a full collection costs 0.2 s with transformers imported
    gc.collect()  # DataLoader iterators stop their workers when collected
    _, alive = psutil.wait_procs(new, timeout=LEFTOVER_GRACE_S)
    descriptions = [_describe(process) for process in alive]
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return descriptions


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail a test that leaves a process running (servers, workers, launched scripts)."""
    before = set(marked_processes())
    yield
    leftovers = leftover_processes(before)
    if leftovers:
        pytest.fail("the test left processes running (now killed): " + "; ".join(leftovers), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """The same check for the whole session (processes started by fixtures of wider scope)."""
    leftovers = leftover_processes(set())
    if leftovers:
        print("\nerror: the test session left processes running (now killed): " + "; ".join(leftovers))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
