"""Run a test's worker in several forked processes that form a gloo group, and stop them all."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def run_forked_workers(worker, world_size: int, folder: Path, timeout: float = 300.0) -> None:
    """``worker(rank, world_size, store_path, folder)`` in `world_size` forked processes; a test
    failure (and every process killed) when they do not all finish within `timeout` seconds.

    Fork: the children inherit the imported modules (spawn re-imports hf_ssl and transformers,
    ~20 s each).
    """
    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=(world_size, str(folder / "store"), str(folder)), nprocs=world_size,
                                 join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world_size}-process run did not finish within {timeout:.0f} s")
