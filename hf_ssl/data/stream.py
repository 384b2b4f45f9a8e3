"""The training stream: block-shuffled, resumable to the exact sample, decoded in workers.

Why not `IterableDataset.shuffle(buffer_size)`: a rolling shuffle buffer's content depends on
the whole history, so `datasets` documents its resume as approximate (the buffer is lost).
Here each worker reads its shards in blocks of `shuffle_buffer_size` rows and permutes each
block with a generator seeded by ``(seed, rank, epoch, worker, block)``; shard order changes
every epoch (`set_epoch`). The position is then the source's own `state_dict()` at the start of
the current block plus an offset into it: resuming reloads the source there, re-reads one
block (encoded rows only, nothing is decoded), applies the same permutation and skips the
offset. Transform randomness is seeded per row from the same coordinates, so a resumed run
produces the same tensors as an uninterrupted one. `torchdata`'s `StatefulDataLoader`
collects these per-worker states together with the batches it hands out, so prefetched but
unconsumed batches are not counted as seen.

A row whose transform raises `UndecodableImageError` is skipped and counted, and every count
reaches the training loop: a batch carries the rows skipped since its worker's previous batch,
and when a worker's epoch ends, one count-only item carries the rows skipped after its last full
batch (trailing corrupt rows, and those among the rows of the incomplete last batch, which is
dropped). The count is part of the position, so a resumed run counts every row exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .images import UndecodableImageError, decode_image

logger = logging.getLogger(__name__)

# Corrupt rows are counted always, but only the first few per worker are logged one by one.
_MAX_LOGGED_CORRUPT_SAMPLES = 5

RowTransform = Callable[[dict[str, Any]], dict[str, torch.Tensor]]


def _sample_seed(*coordinates: int) -> int:
    """A 63-bit seed that depends on every coordinate (order matters)."""
    return int(np.random.SeedSequence([int(value) for value in coordinates]).generate_state(2, np.uint64)[0] >> 1)


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack each key of `samples` along a new first dimension.

    Keys are independent: multi-crop views of different sizes per key are fine (``global_crops``
    ``(2, 3, 224, 224)`` and ``local_crops`` ``(6, 3, 96, 96)`` become ``(B, 2, 3, 224, 224)`` and
    ``(B, 6, 3, 96, 96)``); numbers become a 1-D tensor.
    """
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return batch


class ResumableRowStream(IterableDataset):
    """Apply a per-row transform to the rows of a `datasets.IterableDataset`, resumably.

    Iterating yields ``{**transform(row), "skipped_samples": n}`` (n = rows skipped since the
    previous sample of this worker), then, if rows were skipped after the last sample, one item
    ``{"skipped_samples": n}`` without tensors. `TrainingBatches` iterates `batched` instead.

    Args:
        source: one process's part of the data (see `hf_ssl.data.stream_source`), images not decoded.
        columns: the columns kept in each row given to `transform`.
        transform: ``dict[column, raw value] -> dict[str, Tensor]``; it decodes what it needs
            (`hf_ssl.data.decode_image` for image cells). Raising `UndecodableImageError` skips
            and counts the row; any other exception stops the run.
        seed: run seed; with `rank` it fixes the block permutations and transform randomness.
        shuffle_buffer_size: rows per shuffled block (memory: this many encoded rows per worker).
        rank: this process's index, so processes draw different augmentations.
    """

    def __init__(
        self,
        source: datasets.IterableDataset,
        columns: Sequence[str],
        transform: RowTransform,
        *,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        rank: int = 0,
    ):
        if shuffle_buffer_size < 1:
            raise ValueError(f"shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}")
        if isinstance(columns, str) or not columns:
            raise ValueError(f"columns must be a non-empty sequence of column names, got {columns!r}")
        self.source = source
        self.columns = list(columns)
        self.transform = transform
        self.seed = seed
        self.shuffle_buffer_size = shuffle_buffer_size
        self.rank = rank
        # In shared memory, so that `set_epoch` in the training process reaches persistent DataLoader
        # workers, which keep their own copy of this object across epochs (as datasets' own epoch does).
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._resume_state: dict | None = None
        self._state: dict = self._fresh_state()

    def _fresh_state(self) -> dict:
        return {"epoch": self.epoch, "block_index": 0, "block_source_state": None, "offset": 0}

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at the next `iter()`: new shard order and new block permutations."""
        self._epoch.fill_(epoch)
        self.source.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Position after the last row this worker read for what it yielded (called in the worker by torchdata)."""
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` at the next `iter()` if it belongs to the current epoch."""
        self._resume_state = dict(state)

    def _read_block(self, rows: Iterator[dict]) -> list[dict]:
        block = []
        for row in rows:
            block.append({column: row[column] for column in self.columns})
            if len(block) == self.shuffle_buffer_size:
                break
        return block

    def samples(self) -> Iterator[tuple[dict[str, torch.Tensor] | None, int]]:
        """``(sample, rows skipped just before it)`` per transformed row, then ``(None, trailing skipped rows)``.

        `state_dict()` is, at every pause, the position right after the row last read.
        """
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        resume, self._resume_state = self._resume_state, None
        if resume is not None and resume.get("epoch") == self.epoch:
            block_index, offset = resume["block_index"], resume["offset"]
            block_source_state = resume["block_source_state"]
        else:
            block_index, offset, block_source_state = 0, 0, None
        # None = the start of the epoch; a stale starting state must not leak into a fresh epoch.
        self.source.load_state_dict(block_source_state)
        rows = iter(self.source)
        skipped = 0
        logged_corrupt = 0
        while True:
            block = self._read_block(rows)
            next_block_source_state = self.source.state_dict()
            if not block:
                self._state = {"epoch": self.epoch, "block_index": block_index, "block_source_state": block_source_state, "offset": 0}
                yield None, skipped
                return
            order = np.random.default_rng([self.seed, self.rank, self.epoch, worker_id, block_index]).permutation(len(block))
            for position in range(offset, len(block)):
                self._state = {
                    "epoch": self.epoch,
                    "block_index": block_index,
                    "block_source_state": block_source_state,
                    "offset": position + 1,
                }
                seed = _sample_seed(self.seed, self.rank, self.epoch, worker_id, block_index, position)
                try:
                    # fork_rng: with num_workers=0 this runs in the training process, whose RNG drives the model.
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed)
                        sample = self.transform(block[order[position]])
                except UndecodableImageError as error:
                    skipped += 1
                    if logged_corrupt < _MAX_LOGGED_CORRUPT_SAMPLES:
                        # Where the file is unknown (bytes in a table), the row says where to look.
                        logger.warning("Skipping an undecodable sample (epoch %d, worker %d, its row %d): %s", self.epoch,
                                       worker_id, block_index * self.shuffle_buffer_size + int(order[position]), error)
                        logged_corrupt += 1
                    continue
                yield sample, skipped
                skipped = 0
            block_index += 1
            offset = 0
            block_source_state = next_block_source_state

    def __iter__(self):
        for sample, skipped in self.samples():
            if sample is not None:
                yield {**sample, "skipped_samples": skipped}
            elif skipped:
                yield {"skipped_samples": skipped}

    def batched(self, batch_size: int) -> BatchedRowStream:
        """The same stream as collated batches of exactly `batch_size` rows (see `BatchedRowStream`)."""
        return BatchedRowStream(self, batch_size)


class BatchedRowStream(IterableDataset):
    """Batches of exactly `batch_size` transformed rows, assembled in the worker; for a DataLoader
    with ``batch_size=None``.

    Yields ``{**collate_samples(rows), "skipped_samples": tensor(n)}`` and, at the end of the
    worker's epoch when rows were skipped after its last batch, ``{"skipped_samples": tensor(n),
    "unbatched_samples": tensor(m)}`` (m = good rows of the dropped incomplete batch). Its state
    is the wrapped stream's, which after each batch points right after the batch's last row.
    """

    def __init__(self, stream: ResumableRowStream, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stream = stream
        self.batch_size = batch_size

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def __iter__(self):
        rows, skipped = [], 0
        for sample, skipped_before in self.stream.samples():
            skipped += skipped_before
            if sample is None:
                break
            rows.append(sample)
            if len(rows) == self.batch_size:
                batch = collate_samples(rows)
                batch["skipped_samples"] = torch.tensor(skipped)
                yield batch
                rows, skipped = [], 0
        if skipped or rows:
            yield {"skipped_samples": torch.tensor(skipped), "unbatched_samples": torch.tensor(len(rows))}


class DecodeImageColumn:
    """Row transform for one image column: decode it (`decode_image`), then apply an image transform."""

    def __init__(self, image_column: str, image_transform: Callable[[Any], dict[str, torch.Tensor]]):
        self.image_column = image_column
        self.image_transform = image_transform

    def __call__(self, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.image_transform(decode_image(row[self.image_column]))


class ResumableImageStream(ResumableRowStream):
    """`ResumableRowStream` over one image column with a ``PIL.Image -> dict[str, Tensor]`` transform.

    Args:
        source, seed, shuffle_buffer_size, rank: as in `ResumableRowStream`.
        image_column: column holding the images.
        transform: ``PIL.Image -> dict[str, Tensor]`` (see `hf_ssl.transforms.build_transform`).
    """

    def __init__(
        self,
        source: datasets.IterableDataset,
        image_column: str,
        transform: Callable[[Any], dict[str, torch.Tensor]],
        *,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        rank: int = 0,
    ):
        super().__init__(
            source, [image_column], DecodeImageColumn(image_column, transform),
            seed=seed, shuffle_buffer_size=shuffle_buffer_size, rank=rank,
        )
        self.image_column = image_column
