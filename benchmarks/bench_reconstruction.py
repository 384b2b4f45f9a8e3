"""Training speed and peak memory: hf-ssl's SimMIM / MAE next to transformers' own classes.

Pairs, each at the same configuration and with the same weights:

- SimMIM ViT-S/16 at 224 px: `hf_ssl` `ViTForSimMIM` vs transformers `ViTForMaskedImageModeling`
- SimMIM Swin-T at 192 px (window 6): `SwinForSimMIM` vs `SwinForMaskedImageModeling`
- MAE ViT-S/16 at 224 px: `hf_ssl` `ViTForMAE` vs transformers `ViTMAEForPreTraining`

A training step is forward + backward + AdamW step on a batch of random normalised images, with
the mask drawn inside the step for both sides (transformers' SimMIM classes take a mask but do not
draw one, so its step calls the same SimMIM mask generator hf-ssl uses; MAE draws its own noise).
Both models of a pair are timed in the same process with their steps interleaved, so a change
in machine load hits both equally. Peak memory is measured separately for each model in a fresh
process: the growth of peak resident memory (Linux VmHWM, reset after start-up) over the first
training steps (on CUDA: `torch.cuda.max_memory_allocated`).

    python benchmarks/bench_reconstruction.py            # writes benchmarks/results/reconstruction.{json,md}
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PAIRS = ("simmim-vit-small-224", "simmim-swin-tiny-192", "mae-vit-small-224")


def build_pair(pair: str):
    """``(hf_ssl_model, transformers_model, image_size)`` with equal weights."""
    from transformers import SwinForMaskedImageModeling, ViTForMaskedImageModeling, ViTMAEConfig, ViTMAEForPreTraining

    import hf_ssl  # noqa: F401
    from hf_ssl.recipes import build_model

    torch.manual_seed(0)
    if pair == "simmim-vit-small-224":
        ours = build_model("simmim", "vit-small", 224)
        reference = ViTForMaskedImageModeling(ours.config.encoder_config())
    elif pair == "simmim-swin-tiny-192":
        ours = build_model("simmim", "swin-tiny", 192)
        reference = SwinForMaskedImageModeling(ours.config.encoder_config())
    elif pair == "mae-vit-small-224":
        ours = build_model("mae", "vit-small", 224)
        fields = {k: v for k, v in ours.config.to_diff_dict().items() if k not in ("model_type", "architectures")}
        reference = ViTMAEForPreTraining(ViTMAEConfig(**fields))
    else:
        raise ValueError(f"pair must be one of {PAIRS}, got {pair!r}")
    reference.load_state_dict(ours.state_dict(), strict=True)
    return ours, reference, ours.config.image_size


def make_step(model, batch: torch.Tensor):
    """One training step (mask drawn inside) and its optimizer."""
    from transformers import SwinForMaskedImageModeling, ViTForMaskedImageModeling

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    mask_generator = None
    # transformers' SimMIM classes take a mask but never draw one: draw it as hf-ssl does.
    if isinstance(model, (ViTForMaskedImageModeling, SwinForMaskedImageModeling)):
        from hf_ssl.masking.simmim import SimMIMMaskGenerator

        config = model.config
        mask_generator = SimMIMMaskGenerator(config.image_size, config.patch_size, 32, 0.6, "random")

    def step() -> float:
        kwargs = {}
        if mask_generator is not None:
            kwargs["bool_masked_pos"] = mask_generator(batch.shape[0]).to(batch.device)
        loss = model(pixel_values=batch, **kwargs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def time_pair(pair: str, batch_size: int, warmup_steps: int, timed_steps: int, device: str) -> dict:
    ours, reference, image_size = build_pair(pair)
    batch = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    models = {"hf_ssl": ours.to(device).train(), "transformers": reference.to(device).train()}
    steps = {name: make_step(model, batch) for name, model in models.items()}
    seconds = {name: 0.0 for name in models}
    for _ in range(warmup_steps):
        for step in steps.values():
            step()
    for _ in range(timed_steps):
        for name, step in steps.items():  # interleaved: load changes hit both sides
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
    result = {}
    for name, model in models.items():
        result[name] = {
            "class": type(model).__name__,
            "attn_implementation": model.config._attn_implementation,
            "images_per_second": batch_size * timed_steps / seconds[name],
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    return result


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_memory_worker(pair: str, side: str, batch_size: int, steps: int, device: str, queue) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    ours, reference, image_size = build_pair(pair)
    model = (ours if side == "hf_ssl" else reference).to(device).train()
    del ours, reference
    batch = torch.randn(batch_size, 3, image_size, image_size).to(device)
    step = make_step(model, batch)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        start = _resident_kib("VmRSS") * 1024
    for _ in range(steps):
        step()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _resident_kib("VmHWM") * 1024
    queue.put((peak - start) / 2**20)


def peak_memory_mib(pair: str, side: str, batch_size: int, steps: int, device: str) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_memory_worker, args=(pair, side, batch_size, steps, device, queue))
    process.start()
    value = queue.get()
    process.join()
    return value


def write_markdown(results: dict, path: Path) -> None:
    meta = results["meta"]
    lines = [
        "# Reconstruction methods: training throughput and peak memory",
        "",
        f"Generated by `benchmarks/bench_reconstruction.py` on {meta['device_description']}, "
        f"torch {meta['torch']}, transformers {meta['transformers']}, {meta['threads']} threads, fp32, "
        f"batch {meta['batch_size']}, {meta['warmup_steps']} warm-up + {meta['timed_steps']} timed steps "
        f"(interleaved), load average at start {meta['load_average_start']}.",
        "",
        "| pair | hf-ssl img/s | transformers img/s | speed ratio (hf-ssl / transformers) "
        "| hf-ssl peak MiB | transformers peak MiB | attention |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for pair in meta["pairs"]:
        row = results[pair]
        ours, reference = row["hf_ssl"], row["transformers"]
        lines.append(
            f"| {pair} ({ours['class']} vs {reference['class']}) | {ours['images_per_second']:.2f} | "
            f"{reference['images_per_second']:.2f} | {row['speed_ratio']:.3f} | {ours['peak_memory_mib']:.0f} | "
            f"{reference['peak_memory_mib']:.0f} | {ours['attn_implementation']} / {reference['attn_implementation']} |"
        )
    lines += [
        "",
        "Both sides run the same encoder code (transformers' `ViTModel` / `SwinModel` / `ViTMAEModel`) with the",
        "same weights; masks are drawn inside every timed step on both sides. Peak memory is the growth of",
        "the process's peak resident set over the first training steps, in a fresh process per model.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=PAIRS)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--timed_steps", type=int, default=5)
    parser.add_argument("--memory_steps", type=int, default=2, help="steps per model when measuring peak memory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output_dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    import transformers

    device_description = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"
    results = {"meta": {
        "pairs": args.pairs, "batch_size": args.batch_size, "warmup_steps": args.warmup_steps,
        "timed_steps": args.timed_steps, "device": args.device, "device_description": device_description,
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()], "dtype": "float32",
    }}
    for pair in args.pairs:
        started = time.perf_counter()
        row = time_pair(pair, args.batch_size, args.warmup_steps, args.timed_steps, args.device)
        for side in ("hf_ssl", "transformers"):
            row[side]["peak_memory_mib"] = peak_memory_mib(pair, side, args.batch_size, args.memory_steps, args.device)
        row["speed_ratio"] = row["hf_ssl"]["images_per_second"] / row["transformers"]["images_per_second"]
        results[pair] = row
        print(f"{pair}: {json.dumps(row)}  ({time.perf_counter() - started:.0f} s)", flush=True)
    results["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "reconstruction.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, output_dir / "reconstruction.md")
    print((output_dir / "reconstruction.md").read_text())


if __name__ == "__main__":
    main()
