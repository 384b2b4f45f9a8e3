"""SplitMask training-step throughput and memory next to transformers' BEiT, same encoder size.

For ViT-Tiny/16 and ViT-S/16 at 224 px, measures one full training step (forward, backward,
AdamW) of:
  - hf-ssl ViTForSplitMask (two complementary half views per image, 2-block decoder, InfoNCE),
  - hf-ssl ViTForBEiT (one 40 % block-wise mask, encoder over all positions),
  - transformers BeitForMaskedImageModeling (same encoder width/depth, 40 % mask).
Every model runs in its own subprocess so that peak resident memory is its own; runs are
interleaved and repeated, the best repeat is kept (the least disturbed by other load).

Writes benchmarks/results/splitmask.json and splitmask.md.

    python benchmarks/bench_splitmask.py               # ViT-Tiny and ViT-S, batch 8
    python benchmarks/bench_splitmask.py --quick       # ViT-Tiny only, fewer steps
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODELS = ("hf-ssl SplitMask", "hf-ssl BEiT", "transformers BEiT")


def _build(name: str, preset: str):
    import torch
    from transformers import BeitConfig, BeitForMaskedImageModeling

    import hf_ssl
    from hf_ssl.masking import beit_mask

    _, fields = hf_ssl.backbone_preset(preset)
    grid = (14, 14)
    if name == "transformers BEiT":
        config = BeitConfig(image_size=224, patch_size=16, vocab_size=8192, use_mask_token=True, **fields)
        model = BeitForMaskedImageModeling(config)

        def step_inputs(pixel_values):
            mask = beit_mask("blockwise", pixel_values.shape[0], grid, 0.4)
            labels = torch.randint(0, 8192, (int(mask.sum()),))
            return dict(pixel_values=pixel_values, bool_masked_pos=mask, labels=labels)

        return model, step_inputs
    config_class, model_class = (
        (hf_ssl.SplitMaskConfig, hf_ssl.ViTForSplitMask) if name == "hf-ssl SplitMask" else (hf_ssl.BEiTConfig, hf_ssl.ViTForBEiT)
    )
    model = model_class(config_class(image_size=224, patch_size=16, tokenizer_vocab_size=8192, tokenizer_method="uniform", **fields))
    model.fit_tokenizer([], progress=False)  # a uniform random vocabulary: same cost as a fitted one
    return model, lambda pixel_values: dict(pixel_values=pixel_values)


def measure(name: str, preset: str, batch_size: int, warmup: int, steps: int) -> dict:
    """One model in this process: seconds per training step and peak RSS."""
    import psutil
    import torch

    torch.manual_seed(0)
    model, step_inputs = _build(name, preset)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixel_values = torch.randn(batch_size, 3, 224, 224)
    rss_after_build = psutil.Process().memory_info().rss
    durations = []
    for index in range(warmup + steps):
        inputs = step_inputs(pixel_values)
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            durations.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = sorted(durations)[len(durations) // 2]  # median step
    return {
        "model": name,
        "preset": preset,
        "batch_size": batch_size,
        "seconds_per_step": seconds,
        "images_per_second": batch_size / seconds,
        "peak_rss_mb": peak_rss / 2**20,
        "training_memory_mb": (peak_rss - rss_after_build) / 2**20,
        "parameters_millions": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["vit-tiny", "vit-small"])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="ViT-Tiny only, 1 repeat, 3 steps")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker[0], args.worker[1], args.batch_size, args.warmup, args.steps)))
        return
    if args.quick:
        args.presets, args.repeats, args.steps = ["vit-tiny"], 1, 3

    best: dict[tuple[str, str], dict] = {}
    for preset in args.presets:
        for repeat in range(args.repeats):
            order = MODELS if repeat % 2 == 0 else tuple(reversed(MODELS))
            for name in order:
                command = [sys.executable, __file__, "--worker", name, preset, "--batch_size", str(args.batch_size),
                           "--warmup", str(args.warmup), "--steps", str(args.steps)]
                result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
                print(f"{preset:10s} {name:18s} {result['images_per_second']:7.2f} img/s  peak {result['peak_rss_mb']:7.0f} MB", flush=True)
                key = (preset, name)
                if key not in best or result["images_per_second"] > best[key]["images_per_second"]:
                    best[key] = result

    import torch

    rows = list(best.values())
    for row in rows:
        reference = best[(row["preset"], "transformers BEiT")]
        row["speed_vs_transformers_beit"] = row["images_per_second"] / reference["images_per_second"]
        row["memory_vs_transformers_beit"] = row["training_memory_mb"] / reference["training_memory_mb"]
    report = {
        "benchmark": "training step (forward + backward + AdamW), 224 px, patch 16, fp32",
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "splitmask.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# SplitMask vs BEiT: training step on CPU",
        "",
        f"{report['benchmark']}; batch {args.batch_size}; median of {args.steps} steps after {args.warmup} warm-up, "
        f"best of {args.repeats} interleaved repeats; torch {torch.__version__}, {torch.get_num_threads()} threads.",
        "",
        "| backbone | model | images/s | x transformers BEiT | training memory (MB) | x transformers BEiT | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['preset']} | {row['model']} | {row['images_per_second']:.2f} | {row['speed_vs_transformers_beit']:.2f} | "
            f"{row['training_memory_mb']:.0f} | {row['memory_vs_transformers_beit']:.2f} | {row['peak_rss_mb']:.0f} |"
        )
    (RESULTS / "splitmask.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
