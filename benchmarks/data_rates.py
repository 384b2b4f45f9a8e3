"""Data side of the suite: decode + augment images/s per DataLoader worker, and the full loader stack.

Per-worker rate: one process with one torch thread (what a DataLoader worker gets) runs a case's
row transform on 224-px JPEGs, decoded either by PIL (`hf_ssl.data.decode_image`, what the recipes
do) or by ``torchvision.io.decode_jpeg`` into a uint8 tensor that the recipe's transforms.v2
pipeline then augments directly. Loader stack: the hf-ssl stream (datasets webdataset shards ->
`ResumableImageStream` -> `TrainingBatches` with N workers) with the "light" transform, images/s.
Workers a step needs = its images/s / the per-worker rate of its transform (rounded up).
"""

from __future__ import annotations

import io
import math
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness import measure_rounds

DECODERS = ("PIL", "torchvision.io")
JPEG_SIZE = 224


def write_jpeg_shards(directory: Path, images: list, number_of_shards: int) -> list[str]:
    """`images` (PIL) as JPEG (quality 90) webdataset shards ``shard-00000.tar``, ...; returns the paths."""
    files = []
    for shard in range(number_of_shards):
        path = directory / f"shard-{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for index in range(shard, len(images), number_of_shards):
                data = jpeg_bytes(images[index])
                info = tarfile.TarInfo(f"{index:08d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        files.append(str(path))
    return files


def jpeg_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def torchvision_row_transform(row_transform: Callable[[dict], dict]) -> Callable[[dict], dict] | None:
    """The same augmentation on a ``torchvision.io.decode_jpeg`` uint8 tensor (None when the row transform
    is not an image transform over a decoded image, e.g. it also tokenizes a caption)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    image_transform = getattr(row_transform, "image_transform", None)
    if image_transform is None:
        return None

    def transform(row: dict) -> dict:
        encoded = torch.frombuffer(bytearray(row["image"]), dtype=torch.uint8)
        return image_transform(decode_jpeg(encoded, mode=ImageReadMode.RGB))  # (3, H, W) uint8

    return transform


def per_worker_rates(
    row_transforms: dict[str, Callable[[dict], dict]],
    encoded_images: list[bytes],
    captions: list[str],
    rounds: int,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Images/s of each ``(transform, decoder)`` in one process with one thread, interleaved rounds.

    Args:
        row_transforms: ``{case name: row transform}`` (the recipes' own).
        encoded_images: JPEG bytes; every round transforms each of them once.
    Returns:
        ``{"<case> | <decoder>": {"case", "decoder", "best_per_second", "median_per_second", ...}}``;
        a decoder the transform cannot take is reported with its reason instead of rates.
    """
    results, entries = {}, {}
    for case_name, row_transform in row_transforms.items():
        for decoder in DECODERS:
            name = f"{case_name} | {decoder}"
            transform = row_transform if decoder == "PIL" else torchvision_row_transform(row_transform)
            results[name] = {"case": case_name, "decoder": decoder}
            if transform is None:
                results[name]["skipped"] = "the transform reads more than a decoded image (e.g. a caption)"
                continue
            try:
                transform({"image": encoded_images[0], "caption": captions[0]})
            except (TypeError, ValueError, RuntimeError) as error:
                results[name]["skipped"] = f"{type(error).__name__}: {error}"
                continue
            entries[name] = _cycling(transform, encoded_images, captions)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker's share
    try:
        timings = measure_rounds(entries, {name: 1 for name in entries}, rounds, len(encoded_images),
                                 torch.device("cpu"), progress)
    finally:
        torch.set_num_threads(threads)
    for name, timing in timings.items():
        results[name].update(timing.summary())
    return results


def _cycling(transform: Callable[[dict], dict], encoded_images: list[bytes], captions: list[str]) -> Callable[[], dict]:
    position = [0]

    def call() -> dict:
        index = position[0] % len(encoded_images)
        position[0] += 1
        return transform({"image": encoded_images[index], "caption": captions[index % len(captions)]})

    return call


def loader_stack_rate(files: list[str], number_of_images: int, num_workers: int, batch_size: int) -> dict:
    """Images/s through the hf-ssl loader stack ("light" transform, 224 px) with `num_workers` workers:
    one pass over the shards after the first batch (worker start-up is not throughput)."""
    from hf_ssl.data import (
        ResumableImageStream,
        TrainingBatches,
        load_image_dataset,
        stream_source,
    )
    from hf_ssl.transforms import build_transform

    dataset = load_image_dataset("webdataset", data_files=files, streaming=True)
    stream = ResumableImageStream(stream_source(dataset, "jpg"), "jpg", build_transform("light", JPEG_SIZE),
                                  shuffle_buffer_size=64)
    batches = TrainingBatches(stream, batch_size=batch_size, num_workers=num_workers)
    next(batches)
    count = max(number_of_images // batch_size - 1, 1)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    seconds = time.perf_counter() - start
    return {"num_workers": num_workers, "batch_size": batch_size, "images": count * batch_size,
            "images_per_second": count * batch_size / seconds,
            "images_per_second_per_worker": count * batch_size / seconds / max(num_workers, 1)}


def workers_needed(step_images_per_second: float, worker_images_per_second: float) -> int:
    """DataLoader workers that keep a step fed: ceil(step rate / per-worker rate)."""
    return math.ceil(step_images_per_second / worker_images_per_second)


__all__ = ["DECODERS", "JPEG_SIZE", "loader_stack_rate", "per_worker_rates", "workers_needed", "write_jpeg_shards"]
