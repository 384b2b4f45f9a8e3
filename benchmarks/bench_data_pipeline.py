"""Is the data pipeline fast enough to feed a ViT-S training step?

Generates 224-px JPEG webdataset shards, then measures
1. the pipeline: stream -> decode -> RGB -> "light" augmentation -> batches, in DataLoader
   worker processes (the code `trainers/pretrain.py` runs), images/s;
2. the training step's consumption: SplitMask ViT-S/16 at 224 (forward + backward + AdamW),
   images/s, fp32 and bf16 autocast, on the same machine.
Writes benchmarks/results/data_pipeline.json and .md. Run once: ``python benchmarks/bench_data_pipeline.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.data import ResumableImageStream, TrainingBatches, load_image_dataset, stream_source
from hf_ssl.recipes import build_model
from hf_ssl.transforms import build_transform

RESULTS = Path(__file__).parent / "results"


def write_jpeg_shards(directory: Path, number_of_images: int, number_of_shards: int, size: int = 224) -> list[str]:
    """Smooth random photos-like images (upsampled noise), JPEG quality 90, ~15-25 kB each."""
    rng = np.random.default_rng(0)
    files = []
    for shard in range(number_of_shards):
        path = directory / f"shard-{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for index in range(shard, number_of_images, number_of_shards):
                small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
                image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                data = buffer.getvalue()
                info = tarfile.TarInfo(f"{index:08d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        files.append(str(path))
    return files


def pipeline_images_per_second(files: list[str], num_workers: int, batch_size: int, batches: int) -> float:
    dataset = load_image_dataset("webdataset", data_files=files, streaming=True)
    stream = ResumableImageStream(stream_source(dataset, "jpg"), "jpg", build_transform("light", 224), shuffle_buffer_size=256)
    loader = TrainingBatches(stream, batch_size=batch_size, num_workers=num_workers)
    next(loader)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch_size / (time.perf_counter() - start)


def training_images_per_second(batch_size: int, steps: int, bf16: bool) -> float:
    torch.manual_seed(0)
    model = build_model("splitmask", "vit-small", 224)
    pixel_values = torch.randn(batch_size, 3, 224, 224)
    model.fit_tokenizer([pixel_values], num_epochs=1, progress=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(pixel_values).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--train_steps", type=int, default=3)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        files = write_jpeg_shards(Path(directory), options.images, options.shards)
        jpeg_kilobytes = sum(os.path.getsize(file) for file in files) / options.images / 1024
        batches = options.images // options.batch_size - 2
        pipeline = pipeline_images_per_second(files, options.num_workers, options.batch_size, batches)
    # The training process uses every core when it does not share them with loader workers.
    torch.set_num_threads(os.cpu_count() or 1)
    training_fp32 = training_images_per_second(options.train_batch_size, options.train_steps, bf16=False)
    training_bf16 = training_images_per_second(options.train_batch_size, options.train_steps, bf16=True)
    fastest_training = max(training_fp32, training_bf16)
    results = {
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "images": options.images,
        "jpeg_size_px": 224,
        "mean_jpeg_kilobytes": round(jpeg_kilobytes, 1),
        "augmentation": "light (RandomResizedCrop 0.67-1 + flip + normalize)",
        "num_workers": options.num_workers,
        "batch_size": options.batch_size,
        "pipeline_images_per_second": round(pipeline, 1),
        "pipeline_images_per_second_per_worker": round(pipeline / max(options.num_workers, 1), 1),
        "training_model": "SplitMask ViT-S/16 @224 (forward + backward + AdamW)",
        "training_batch_size": options.train_batch_size,
        "training_images_per_second_fp32": round(training_fp32, 2),
        "training_images_per_second_bf16": round(training_bf16, 2),
        "pipeline_over_training_ratio": round(pipeline / fastest_training, 1),
        "loader_is_bottleneck": pipeline < fastest_training,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Data pipeline vs ViT-S training step",
        "",
        f"Machine: {results['hardware']}. Generated {options.images} JPEGs at 224 px "
        f"(~{results['mean_jpeg_kilobytes']} kB) in {options.shards} webdataset shards.",
        "",
        "| measurement | images/s |",
        "|---|---|",
        f"| pipeline: decode + RGB + light augmentation, {options.num_workers} workers, batch {options.batch_size} | {results['pipeline_images_per_second']} |",
        f"| per worker | {results['pipeline_images_per_second_per_worker']} |",
        f"| SplitMask ViT-S/16 training step, fp32, batch {options.train_batch_size} | {results['training_images_per_second_fp32']} |",
        f"| SplitMask ViT-S/16 training step, bf16 autocast, batch {options.train_batch_size} | {results['training_images_per_second_bf16']} |",
        "",
        f"The loader delivers {results['pipeline_over_training_ratio']}x what the fastest training step consumes: "
        f"{'it IS' if results['loader_is_bottleneck'] else 'it is not'} the bottleneck here.",
        "Both were measured alone on the same cores. On a GPU, size `--dataloader_num_workers` from the "
        "per-worker rate: workers >= (GPU images/s) / (per-worker images/s).",
        "",
    ]
    (RESULTS / "data_pipeline.md").write_text("\n".join(lines))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
