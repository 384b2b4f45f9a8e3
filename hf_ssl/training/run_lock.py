"""One run at a time per run folder: an exclusive lock held from before the folder checks to the end.

Two runs started together into one ``--output_dir`` both passed the run-folder checks (check, then
act): each save deleted the other's temporary checkpoint, one died with a traceback, and the
survivor's log, loss curve and card mixed two runs' losses. The lock is `fcntl.flock` on
``<output_dir>/.hf-ssl-run.lock``, taken before the checks, so the second run is refused in one
line naming the PID that holds it. The operating system releases a flock when its process ends in
any way, so a run killed with ``kill -9`` never leaves a stale lock behind; processes it forks
(DataLoader workers) close their copy of the descriptor, so they cannot keep it after their parent.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from .errors import ConfigurationError
from .run_folder import check_output_dir_usable

LOCK_NAME = ".hf-ssl-run.lock"


class RunFolderLock:
    """A held lock; it is released by `release`, or by the operating system when the process ends."""

    def __init__(self, descriptor: int, path: Path):
        self.descriptor, self.path = descriptor, path

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing the last descriptor of the open file releases the flock
            self.descriptor = None

    def forget(self) -> None:
        """In a forked child: close the inherited descriptor, which leaves the parent's lock held."""
        self.release()

    def __del__(self):
        self.release()


def lock_run_folder(output_dir: str | Path) -> RunFolderLock:
    """Create `output_dir` if needed and lock it for this process.

    Raises:
        ConfigurationError: the folder is unusable (`check_output_dir_usable`), or another process
            holds the lock (its PID is named).
    """
    output_dir = Path(output_dir)
    check_output_dir_usable(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "not yet recorded"
        os.close(descriptor)
        raise ConfigurationError(
            f"--output_dir {output_dir} is in use by another hf-ssl run (PID {holder}): wait for it to end, or choose "
            "another --output_dir"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    lock = RunFolderLock(descriptor, path)
    held = weakref.ref(lock)  # weak: the fork hook must not keep a finished run's lock alive
    os.register_at_fork(after_in_child=lambda: held() is not None and held().forget())
    return lock


def lock_run_folder_for_all_processes(output_dir: str | Path) -> RunFolderLock | None:
    """The main process locks `output_dir` (the one that writes it); every process of a launch gets
    the same answer, so that a refusal stops them all before any collective work.

    Returns:
        The lock on the main process, None on the others.

    Raises:
        ConfigurationError: on every process, when the main process could not lock the folder.
    """
    state = PartialState()
    lock, refusal = None, None
    if state.is_main_process:
        try:
            lock = lock_run_folder(output_dir)
        except ConfigurationError as error:
            refusal = str(error)
    if state.num_processes > 1:
        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise ConfigurationError(refusal)
    return lock
