"""Batches for as many steps as training needs: epochs roll over, position is checkpointable."""

from __future__ import annotations

import signal
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from .loading import DatasetConfigurationError
from .stream import ResumableRowStream


# torchdata 0.11 calls a deprecated torch API on every iter(); the warning says nothing to users.
warnings.filterwarnings("ignore", message=".*set_vital.*", category=UserWarning)


class EmptyEpochError(DatasetConfigurationError):
    """An epoch produced no batch: the data is empty, entirely undecodable, or smaller than a batch."""


def ignore_stop_signals(worker_id: int) -> None:
    """Worker start-up: SIGINT (Ctrl-C signals the terminal's whole process group) and SIGTERM (Slurm
    signals every process of a job) leave the worker running; the training process, which stops
    after a checkpoint (`hf_ssl.training.interruption`), shuts its workers down itself."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)


def _as_is(item: Any) -> Any:
    """Batches are collated in the worker (`BatchedRowStream`); the loader passes them through."""
    return item


class TrainingBatches:
    """Endless batches from a `ResumableRowStream`, one epoch after the other.

    `state_dict()` is the exact position after the last batch returned (epoch + every worker's
    stream position, via torchdata's `StatefulDataLoader`); `load_state_dict()` continues there.
    Each batch's ``skipped_samples`` counts the undecodable rows read since the previous batch,
    including those a worker found after its last batch of the previous epoch.

    Args:
        stream: the dataset; its epoch is advanced here.
        batch_size: rows per batch on this process (every batch is complete, so every process
            runs the same number of steps with the same shapes; a worker's incomplete last batch
            of an epoch is dropped).
        num_workers: DataLoader worker processes doing decoding and augmentation.
        prefetch_factor: batches each worker prepares ahead.
    """

    def __init__(self, stream: ResumableRowStream, batch_size: int, num_workers: int = 2, prefetch_factor: int = 4):
        self.stream = stream
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.loader = StatefulDataLoader(
            stream.batched(batch_size),
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
            worker_init_fn=ignore_stop_signals,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            # Workers live for the whole run instead of starting again every epoch (a small dataset
            # has an epoch every few steps); the stream's epoch reaches them through shared memory.
            persistent_workers=num_workers > 0,
            # Its own generator: creating an iterator (at start, per epoch, after a resume) must not
            # draw from the global RNG that drives the model's masks, or a resumed run diverges.
            # Transform randomness is seeded per row by the stream itself.
            generator=torch.Generator().manual_seed(stream.seed),
        )
        self.epoch = 0
        self._iterator: Iterator | None = None
        self._batches_this_epoch = 0
        self._skipped_this_epoch = 0
        self._unbatched_this_epoch = 0
        # Skipped rows reported after the last batch returned (end of a worker's epoch): they ride on the next batch.
        self._pending_skipped = 0
        self._loaded_loader_state: dict | None = None

    def __iter__(self):
        return self

    def close(self) -> None:
        """Stop the DataLoader's worker processes now, while the interpreter is whole. Left to the
        interpreter's exit, persistent workers are shut down by finalizers in no fixed order: a
        2-process run that had saved everything sometimes never exited (CI, twice)."""
        iterator = getattr(self.loader, "_iterator", None)  # persistent workers: the loader keeps its iterator
        self.loader._iterator = self._iterator = None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()

    def _end_epoch(self) -> None:
        if self._batches_this_epoch == 0:
            usable, undecodable = self._unbatched_this_epoch, self._skipped_this_epoch
            if usable:
                # Each worker fills its own batches from its own shards.
                reason = (f"its {usable} usable row(s) fill no batch in any of its {max(self.num_workers, 1)} DataLoader "
                          "worker(s): lower --total_batch_size (or --dataloader_num_workers)")
            else:
                reason = "the dataset is empty" if not undecodable else "every row is undecodable"
            raise EmptyEpochError(
                f"epoch {self.epoch} produced no batch of {self.batch_size} rows on this process: {usable} usable row(s), "
                f"{undecodable} undecodable; {reason}"
            )
        self.epoch += 1
        self._iterator = None
        self._batches_this_epoch = self._skipped_this_epoch = self._unbatched_this_epoch = 0

    def __next__(self) -> dict[str, torch.Tensor]:
        while True:
            if self._iterator is None:
                self.stream.set_epoch(self.epoch)
                self._iterator = iter(self.loader)
                self._loaded_loader_state = None
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._end_epoch()
                continue
            skipped = int(batch["skipped_samples"])
            self._skipped_this_epoch += skipped
            if "unbatched_samples" in batch:  # a worker's end-of-epoch count, no rows
                self._pending_skipped += skipped
                self._unbatched_this_epoch += int(batch["unbatched_samples"])
                continue
            batch["skipped_samples"] = torch.tensor(skipped + self._pending_skipped)
            self._pending_skipped = 0
            self._batches_this_epoch += 1
            return batch

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batches_this_epoch": self._batches_this_epoch,
            "skipped_this_epoch": self._skipped_this_epoch,
            "unbatched_this_epoch": self._unbatched_this_epoch,
            "pending_skipped": self._pending_skipped,
            "num_workers": self.num_workers,
            "loader": self.loader.state_dict() if self._iterator is not None else self._loaded_loader_state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at `state`.

        Raises:
            DatasetConfigurationError: `state` was saved with another number of DataLoader workers
                (each worker's position belongs to its own shards).
        """
        if state.get("num_workers", self.num_workers) != self.num_workers:
            raise DatasetConfigurationError(
                f"the data position was saved with --dataloader_num_workers {state['num_workers']}, this run has "
                f"{self.num_workers}: an exact resume needs the same number of workers"
            )
        self.epoch = state["epoch"]
        self._batches_this_epoch = state["batches_this_epoch"]
        self._skipped_this_epoch = state.get("skipped_this_epoch", 0)
        self._unbatched_this_epoch = state.get("unbatched_this_epoch", 0)
        self._pending_skipped = state.get("pending_skipped", 0)
        self.stream.set_epoch(self.epoch)
        if state["loader"] is not None:
            self.loader.load_state_dict(state["loader"])
        self._loaded_loader_state = state["loader"]
        self._iterator = None
