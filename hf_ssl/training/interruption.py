"""Stop a run cleanly on SIGTERM or SIGINT: finish the step, write a checkpoint, say how to resume.

Slurm, Kubernetes and preemptible cloud machines send SIGTERM some seconds before they kill a job;
Ctrl-C sends SIGINT. Without handling, SIGTERM ended a run at once without a checkpoint (up to
``--save_steps`` - 1 steps lost) and Ctrl-C printed a long traceback.

`StopRequests` is installed for the whole run. While the loop trains (`deferring`), the first
signal only records itself: the loop finishes the current optimizer step, all processes agree on
it (the signal seen by any process stops every one at the same step, since the checkpoint is
collective), write a checkpoint and raise `RunInterrupted`. A second signal, or a signal outside
training (loading data, writing the run folder), raises `RunInterrupted` at once. Signals within
`REPEAT_WINDOW_S` of the first count as that first one: a stop often arrives several times at
once (Ctrl-C signals the whole process group, launcher included, and torchrun then forwards a
SIGTERM to its workers; Slurm signals every process of a job step). The CLI prints
its message in one line and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM),
the code shells give a process a signal ended. DataLoader workers ignore both signals
(`hf_ssl.data.loader.ignore_stop_signals`): the training process decides when to stop, and shuts
them down.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from .checkpointing import list_checkpoints

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # hf_ssl.data.loader.ignore_stop_signals lists them too
REPEAT_WINDOW_S = 2.0
RESUME_HINT = "to resume, run the same command with --resume_from_checkpoint latest"


class RunInterrupted(BaseException):
    """The run stopped on a signal; `str(error)` is the one line to print, `exit_code` 128 + the signal.

    A `BaseException`, like `KeyboardInterrupt`: the ``except Exception`` of code that survives
    its own failures (a model card that cannot be drawn) must not swallow a stop.
    """

    def __init__(self, signal_number: int, message: str):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number


def signal_name(signal_number: int) -> str:
    return signal.Signals(signal_number).name


class StopRequests:
    """SIGINT / SIGTERM handling for one run (see the module docstring).

    Attributes:
        output_dir: the run folder, whose newest checkpoint an immediate stop names (None until known).
        announce: print a line when a signal is deferred (the main process does).
    """

    def __init__(self):
        self.output_dir: Path | None = None
        self.announce = True
        self.received: int | None = None  # the deferred signal
        self.received_at = 0.0  # time.monotonic() when it arrived
        self.deferring = False
        self._previous: dict[int, object] = {}

    def install(self) -> "StopRequests":
        """Take over both signals; a no-op outside the main thread, where Python cannot handle signals."""
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame) -> None:
        if self.received is not None and time.monotonic() - self.received_at < REPEAT_WINDOW_S:
            return  # the same stop, delivered again by another sender
        deferred = self.deferring and self.received is None
        self.received, self.received_at = number, time.monotonic()
        if deferred:
            if self.announce:  # tqdm.write: on a line of its own, under the progress bar
                tqdm.write(f"{signal_name(number)} received: stopping after this step with a checkpoint (send it "
                           f"again, {REPEAT_WINDOW_S:g} s or more later, to stop at once)", file=sys.stderr)
            return
        self._stop_at_once(number)

    def start_deferring(self) -> None:
        """The training loop begins: from now on a first signal waits for the end of its step.

        A signal that arrived earlier raised `RunInterrupted` in whatever start-up code was running;
        code that catches everything (a library's bare ``except:`` around a worker start or a file
        read) can swallow it. The signal is still recorded, and it stops the run here, at once.
        """
        if self.received is not None:
            self._stop_at_once(self.received)
        self.deferring = True

    def _stop_at_once(self, number: int) -> None:
        checkpoints = list_checkpoints(self.output_dir) if self.output_dir is not None else []
        kept = f"the newest checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was written yet"
        raise RunInterrupted(number, f"stopped at once by {signal_name(number)}: {kept}; {RESUME_HINT}")
