"""Open any image dataset through `datasets` and turn it into a per-process stream source.

One code path for every source: a Hub dataset name (streaming or not), the packaged builders
(``parquet``, ``webdataset``, ``imagefolder``) with ``data_files`` / ``data_dir``, a local folder,
or the bundled digits. Whatever comes in leaves as a `datasets.IterableDataset` holding only the
columns the method reads, with image decoding switched off (bytes are decoded in DataLoader workers, where a
corrupt file is skipped instead of crashing the iterator), split across processes with
`split_dataset_by_node`.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
from datasets.distributed import split_dataset_by_node

from hf_ssl.local_paths import check_local_path

from .default import bundled_variant, load_default_dataset


class DatasetConfigurationError(ValueError):
    """The dataset arguments cannot work (missing column, unknown split, no files)."""


def load_image_dataset(
    dataset_name: str | None = None,
    *,
    dataset_config_name: str | None = None,
    data_dir: str | None = None,
    data_files: str | Sequence[str] | None = None,
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load `split` of an image dataset with `datasets.load_dataset` (or the bundled digits).

    Args:
        dataset_name: Hub dataset id (``"my-org/my-images"``), packaged builder name
            (``"parquet"``, ``"webdataset"``, ``"imagefolder"``), local folder, or a bundled dataset:
            None / ``"digits"`` (centred digits) or ``"digit-scenes"`` (off-centre digits in clutter).
        data_files / data_dir / dataset_config_name: passed to `datasets.load_dataset`.
        streaming: return an `IterableDataset` that reads while training (no full download).
    """
    variant = bundled_variant(dataset_name)
    if variant is not None and not data_files and not data_dir:
        dataset = load_default_dataset("train" if split == "train" else split, variant=variant)
        return dataset.to_iterable_dataset() if streaming else dataset
    if dataset_name is None:
        raise DatasetConfigurationError(
            "--dataset_name is required with --data_files/--data_dir: use 'parquet', 'webdataset' or 'imagefolder'"
        )
    check_local_path(dataset_name, "--dataset_name", DatasetConfigurationError)
    if isinstance(data_files, (list, tuple)) and len(data_files) == 1:
        data_files = data_files[0]
    try:
        return datasets.load_dataset(
            dataset_name,
            name=dataset_config_name,
            data_dir=data_dir,
            data_files=data_files,
            split=split,
            streaming=streaming,
            cache_dir=cache_dir,
        )
    except (FileNotFoundError, ValueError) as error:
        raise DatasetConfigurationError(f"Cannot load dataset {dataset_name!r} (split {split!r}): {error}") from error


def dataset_column_names(dataset: datasets.Dataset | datasets.IterableDataset) -> list[str]:
    """Column names; for a stream whose features are unknown, read from its first row."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first_row = next(iter(dataset.take(1)), None)
    return [] if first_row is None else list(first_row)


def check_columns(
    dataset: datasets.Dataset | datasets.IterableDataset, columns: Sequence[str], argument: str = "column"
) -> None:
    """Raise a `DatasetConfigurationError` naming the available columns if any of `columns` is absent.

    Args:
        argument: how the message names a missing column (e.g. ``"--image_column"``).
    """
    available = dataset_column_names(dataset)
    missing = [name for name in columns if name not in available]
    if not missing:
        return
    image_like = [name for name in available if name.lower() in ("image", "img", "jpg", "jpeg", "png", "webp")]
    hint = f" (image-like: {', '.join(image_like)})" if image_like else ""
    names = ", ".join(repr(name) for name in missing)
    verb = "is not a column" if len(missing) == 1 else "are not columns"
    raise DatasetConfigurationError(
        f"{argument} {names} {verb} of the dataset; columns: {', '.join(available) or 'none'}{hint}"
    )


def check_image_column(dataset: datasets.Dataset | datasets.IterableDataset, image_column: str) -> None:
    """`check_columns` for the ``--image_column`` argument."""
    check_columns(dataset, [image_column], argument="--image_column")


def stream_source(
    dataset: datasets.Dataset | datasets.IterableDataset,
    columns: str | Sequence[str],
    *,
    rank: int = 0,
    world_size: int = 1,
    shards_per_process: int = 8,
) -> datasets.IterableDataset:
    """Keep `columns` only, switch off decoding of every image among them, and give this process its part.

    A map-style `Dataset` becomes an `IterableDataset` with ``world_size * shards_per_process``
    shards, so `split_dataset_by_node` hands every process whole, disjoint shards and DataLoader
    workers split them further. A stream keeps its own shards (files); when their number does
    not divide `world_size`, `split_dataset_by_node` falls back to every world_size-th example.

    Args:
        dataset: from `load_image_dataset`, with `columns` present.
        columns: the columns the method's row transform reads; a single string is the
            ``--image_column`` (and named so in the error for a missing column).
        rank, world_size: this process and the number of processes.
        shards_per_process: shards per process for a map-style dataset (>= DataLoader workers).
    """
    if isinstance(columns, str):
        check_image_column(dataset, columns)
        columns = [columns]
    else:
        columns = list(columns)
        check_columns(dataset, columns)
    dataset = dataset.select_columns(columns)
    features = dataset.features
    if features is not None:
        for column in columns:
            if isinstance(features.get(column), datasets.Image) and features[column].decode:
                # Decode in the row transform (in workers), where an undecodable file is counted and skipped.
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if isinstance(dataset, datasets.Dataset):
        number_of_shards = max(1, min(len(dataset), world_size * shards_per_process))
        number_of_shards -= number_of_shards % world_size or 0
        dataset = dataset.to_iterable_dataset(num_shards=max(number_of_shards, 1))
    if world_size > 1:
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    return dataset
