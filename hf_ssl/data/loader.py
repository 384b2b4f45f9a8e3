"""Batches for as many steps as training needs: epochs roll over, position is checkpointable."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from .stream import ResumableImageStream, collate_samples


# torchdata 0.11 calls a deprecated torch API on every iter(); the warning says nothing to users.
warnings.filterwarnings("ignore", message=".*set_vital.*", category=UserWarning)


class EmptyEpochError(RuntimeError):
    """An epoch produced no batch: the data is empty, entirely undecodable, or smaller than a batch."""


class TrainingBatches:
    """Endless batches from a `ResumableImageStream`, one epoch after the other.

    `state_dict()` is the exact position after the last batch returned (epoch + every worker's
    stream position, via torchdata's `StatefulDataLoader`); `load_state_dict()` continues there.

    Args:
        stream: the dataset; its epoch is advanced here.
        batch_size: samples per batch on this process (incomplete last batches are dropped so
            every process runs the same number of steps with the same shapes).
        num_workers: DataLoader worker processes doing decoding and augmentation.
        prefetch_factor: batches each worker prepares ahead.
    """

    def __init__(self, stream: ResumableImageStream, batch_size: int, num_workers: int = 2, prefetch_factor: int = 4):
        self.stream = stream
        self.loader = StatefulDataLoader(
            stream,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_samples,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            persistent_workers=False,
            # Its own generator: creating an iterator (at start, per epoch, after a resume) must not
            # draw from the global RNG that drives the model's masks, or a resumed run diverges.
            # Augmentation randomness is seeded per sample by the stream itself.
            generator=torch.Generator().manual_seed(stream.seed),
        )
        self.epoch = 0
        self._iterator: Iterator | None = None
        self._batches_this_epoch = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        while True:
            if self._iterator is None:
                self.stream.set_epoch(self.epoch)
                self._iterator = iter(self.loader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self._batches_this_epoch == 0:
                    raise EmptyEpochError(
                        f"Epoch {self.epoch} produced no batch of {self.loader.batch_size} images on this process: "
                        "the dataset is empty, every sample was undecodable, or it holds fewer images than one batch"
                    ) from None
                self.epoch += 1
                self._iterator = None
                self._batches_this_epoch = 0
                continue
            self._batches_this_epoch += 1
            return batch

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batches_this_epoch": self._batches_this_epoch,
            "loader": self.loader.state_dict() if self._iterator is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self._batches_this_epoch = state["batches_this_epoch"]
        self.stream.set_epoch(self.epoch)
        if state["loader"] is not None:
            self.loader.load_state_dict(state["loader"])
        self._iterator = None
