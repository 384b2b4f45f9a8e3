"""The training stream: block-shuffled, resumable to the exact sample, decoded in workers.

Why not `IterableDataset.shuffle(buffer_size)`: a rolling shuffle buffer's content depends on
the whole history, so `datasets` documents its resume as approximate (the buffer is lost).
Here each worker reads its shards in blocks of `shuffle_buffer_size` rows and permutes each
block with a generator seeded by ``(seed, rank, epoch, worker, block)``; shard order changes
every epoch (`set_epoch`). The position is then the source's own `state_dict()` at the start of
the current block plus an offset into it: resuming reloads the source there, re-reads one
block (bytes only, nothing is decoded), applies the same permutation and skips the offset.
Augmentation randomness is seeded per sample from the same coordinates, so a resumed run
produces the same tensors as an uninterrupted one. `torchdata`'s `StatefulDataLoader`
collects these per-worker states together with the batches it hands out, so prefetched but
unconsumed batches are not counted as seen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .images import UndecodableImageError

logger = logging.getLogger(__name__)

# Corrupt samples are counted always, but only the first few per worker are logged one by one.
_MAX_LOGGED_CORRUPT_SAMPLES = 5


def _sample_seed(*coordinates: int) -> int:
    """A 63-bit seed that depends on every coordinate (order matters)."""
    return int(np.random.SeedSequence([int(value) for value in coordinates]).generate_state(2, np.uint64)[0] >> 1)


class ResumableRowStream(IterableDataset):
    """Decode, convert to RGB and augment the images of a `datasets.IterableDataset`.

    Yields ``{**transform(image), "skipped_samples": int}`` where ``skipped_samples`` counts the
    undecodable rows dropped since the previous yielded sample of this worker.

    Args:
        source: one process's part of the data (see `hf_ssl.data.stream_source`), images not decoded.
        columns: the columns each row keeps.
        transform: ``{column: cell} -> dict[str, Tensor]``, run per row (a recipe's transform);
            raising `UndecodableImageError` skips and counts the row.
        seed: run seed; with `rank` it fixes the block permutations and augmentation randomness.
        shuffle_buffer_size: rows per shuffled block (memory: this many encoded images per worker).
        rank: this process's index, so processes draw different augmentations.
    """

    def __init__(
        self,
        source: datasets.IterableDataset,
        columns: str | list[str],
        transform: Callable[[dict], dict[str, torch.Tensor]],
        *,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        rank: int = 0,
    ):
        if shuffle_buffer_size < 1:
            raise ValueError(f"shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}")
        self.source = source
        self.columns = [columns] if isinstance(columns, str) else list(columns)
        self.transform = transform
        self.seed = seed
        self.shuffle_buffer_size = shuffle_buffer_size
        self.rank = rank
        self.epoch = 0
        self._resume_state: dict | None = None
        self._state: dict = self._fresh_state()

    def _fresh_state(self) -> dict:
        return {"epoch": self.epoch, "block_index": 0, "block_source_state": None, "offset": 0}

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at the next `iter()`: new shard order and new block permutations."""
        self.epoch = epoch
        self.source.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Position after the last sample this worker yielded (called in the worker by torchdata)."""
        return {key: value for key, value in self._state.items()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` at the next `iter()` if it belongs to the current epoch."""
        self._resume_state = dict(state)

    def _read_block(self, rows) -> list:
        block = []
        for row in rows:
            block.append({column: row[column] for column in self.columns})
            if len(block) == self.shuffle_buffer_size:
                break
        return block

    def __iter__(self):
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
        skipped_since_last_yield = 0
        logged_corrupt = 0
        while True:
            block = self._read_block(rows)
            if not block:
                return
            next_block_source_state = self.source.state_dict()
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
                    skipped_since_last_yield += 1
                    if logged_corrupt < _MAX_LOGGED_CORRUPT_SAMPLES:
                        logger.warning("Skipping an undecodable sample (epoch %d): %s", self.epoch, error)
                        logged_corrupt += 1
                    continue
                sample["skipped_samples"] = skipped_since_last_yield
                skipped_since_last_yield = 0
                yield sample
            block_index += 1
            offset = 0
            block_source_state = next_block_source_state


def collate_samples(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the tensors of `samples`; ``skipped_samples`` is summed into one count."""
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in samples[0] if key != "skipped_samples"}
    batch["skipped_samples"] = torch.tensor(sum(sample["skipped_samples"] for sample in samples))
    return batch


class ResumableImageStream(ResumableRowStream):
    """A `ResumableRowStream` over one image column with a transform of the decoded PIL image
    (the 0.1 interface): ``transform(image) -> dict[str, Tensor]``."""

    def __init__(self, source: datasets.IterableDataset, image_column: str, transform: Callable[[Any], dict], **kwargs):
        from hf_ssl.transforms import ImageRowTransform, RowsByRole

        super().__init__(source, [image_column], RowsByRole({"image": image_column}, ImageRowTransform(transform)), **kwargs)
