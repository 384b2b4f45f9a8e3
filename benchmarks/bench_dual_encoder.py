"""Training speed of hf-ssl's dual encoder next to transformers' `VisionTextDualEncoderModel`.

Both models hold the same towers and the same weights: a ViT-S/16 image tower at 224 px and a
small BERT text tower (hf-ssl's ``bert-mini`` preset: 4 layers x 256, vocabulary 8,192), joint
space 512. The transformers model is hf-ssl's own ``to_vision_text_dual_encoder()`` form (a ViT
pooler that is the identity on the CLS token, i.e. one extra 384 x 384 linear layer), trained
with its own loss (``return_loss=True``: CLIP's symmetric cross-entropy on the local batch); the
hf-ssl model computes the same loss through `hf_ssl.losses.clip_loss` (gathered across processes
when several run; one process here).

A training step is forward + backward + AdamW step on a batch of random normalised images and
random token ids. Two caption settings: captions of 8-20 tokens padded to 32 (what a real caption
batch looks like; hf-ssl cuts the trailing all-padding columns, transformers runs all 32), and
captions filling all 32 tokens (no padding to cut: the towers' cost alone). Both models run in the
same process, in interleaved rounds (A then B, then B then A, ...), so a change of machine load
hits both; each round keeps the median step time per model and the report gives the median over
rounds, with the fp32 matmul rate of the host measured in the same run.

The machine must be quiet: with a 1-minute load average above 0.5 the script refuses to run
unless ``--force`` (results on a busy machine say nothing).

    python benchmarks/bench_dual_encoder.py                  # writes benchmarks/results/dual_encoder.{json,md}
    python benchmarks/bench_dual_encoder.py --smoke --force --output_dir /tmp/x   # tiny sizes (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MAX_LOAD_AVERAGE = 0.5
MODELS = ("hf-ssl dual encoder", "transformers VisionTextDualEncoderModel")
FULL_SIZE = dict(image_model="vit-small", image_size=224, text_model="bert-mini", vocab_size=8192, caption_length=32,
                 projection_dim=512, batch_size=16)
SMOKE_SIZE = dict(image_model="vit-micro", image_size=32, text_model="text-micro", vocab_size=300, caption_length=16,
                  projection_dim=32, batch_size=4)


def build_models(size: dict, device: torch.device):
    """``(hf_ssl_model, transformers_model)`` with equal weights, in train mode."""
    import hf_ssl
    from hf_ssl.modeling.dual_encoder import BackboneForDualEncoder, DualEncoderConfig
    from hf_ssl.text import text_preset_config

    torch.manual_seed(0)
    config = DualEncoderConfig(
        backbone_config=hf_ssl.resolve_backbone(size["image_model"], size["image_size"]).nested(),
        text_config=text_preset_config(size["text_model"], size["vocab_size"], size["caption_length"]).to_dict(),
        projection_dim=size["projection_dim"],
        image_size=size["image_size"],
        gather_distributed=False,
    )
    ours = BackboneForDualEncoder(config)
    theirs = ours.to_vision_text_dual_encoder()
    return ours.to(device).train(), theirs.to(device).train()


def caption_batch(size: dict, padded: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random token ids ``(B, L)``; with `padded`, real lengths 8-20 and [PAD] (id 0) after them."""
    batch_size, length = size["batch_size"], size["caption_length"]
    input_ids = torch.randint(5, size["vocab_size"], (batch_size, length), generator=generator)
    attention_mask = torch.ones(batch_size, length, dtype=torch.long)
    if padded:
        lengths = torch.randint(min(8, length), min(20, length) + 1, (batch_size,), generator=generator)
        attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        input_ids = input_ids * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def matmul_gflops(device: torch.device, side: int = 1024, repeats: int = 10) -> float:
    """fp32 matmul rate of this host now (GFLOP/s), to put the images/s in context."""
    a, b = torch.randn(side, side, device=device), torch.randn(side, side, device=device)
    a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * side**3 * repeats / (time.perf_counter() - start) / 1e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(size: dict, rounds: int, warmup: int, steps: int, device: torch.device) -> dict:
    """Interleaved rounds for both caption settings; per model the median over rounds of each round's median step."""
    models = dict(zip(MODELS, build_models(size, device)))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(size["batch_size"], 3, size["image_size"], size["image_size"], generator=generator).to(device)
    settings = {}
    length = size["caption_length"]
    padded_setting = f"captions of {min(8, length)}-{min(20, length)} tokens padded to {length}"
    for setting, padded in ((padded_setting, True), (f"captions of {length} tokens", False)):
        captions = {key: value.to(device) for key, value in caption_batch(size, padded, generator).items()}
        round_medians = {name: [] for name in MODELS}
        for round_index in range(rounds):
            for name in (MODELS if round_index % 2 == 0 else tuple(reversed(MODELS))):
                model, optimizer = models[name], optimizers[name]
                extra = {"return_loss": True} if name != MODELS[0] else {}
                durations = []
                for step in range(warmup + steps):
                    _synchronize(device)
                    start = time.perf_counter()
                    loss = model(pixel_values=pixel_values, **captions, **extra).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    _synchronize(device)
                    if step >= warmup:
                        durations.append(time.perf_counter() - start)
                round_medians[name].append(statistics.median(durations))
        seconds = {name: statistics.median(values) for name, values in round_medians.items()}
        settings[setting] = {
            name: {"seconds_per_step": seconds[name], "images_per_second": size["batch_size"] / seconds[name],
                   "round_medians_s": round_medians[name]}
            for name in MODELS
        }
        settings[setting]["speed_vs_transformers"] = seconds[MODELS[1]] / seconds[MODELS[0]]
    return settings


def write_report(report: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "dual_encoder.json").write_text(json.dumps(report, indent=2) + "\n")
    size, meta = report["size"], report["meta"]
    lines = [
        "# Dual encoder training speed: hf-ssl vs transformers' VisionTextDualEncoderModel",
        "",
        f"Image tower {size['image_model']} at {size['image_size']} px, text tower {size['text_model']} (vocabulary "
        f"{size['vocab_size']}, captions padded to {size['caption_length']}), projection {size['projection_dim']}, "
        f"batch {size['batch_size']}, fp32, same weights; forward + backward + AdamW. Median of {meta['steps']} steps "
        f"after {meta['warmup']} warm-up per round, median over {meta['rounds']} interleaved rounds. {meta['device']}, "
        f"torch {meta['torch']}, {meta['threads']} threads, fp32 matmul {meta['matmul_gflops']:.0f} GFLOP/s, "
        f"load average {meta['load_average_start']} at the start.",
        "",
        "| captions | hf-ssl images/s | transformers images/s | hf-ssl speed-up |",
        "|---|---|---|---|",
    ]
    for setting, result in report["results"].items():
        lines.append(f"| {setting} | {result[MODELS[0]]['images_per_second']:.2f} | "
                     f"{result[MODELS[1]]['images_per_second']:.2f} | {result['speed_vs_transformers']:.2f}x |")
    lines += ["", "hf-ssl cuts caption columns that are padding in every row before the text tower; with no padding "
              "both compute the same towers and loss."]
    (output_dir / "dual_encoder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=None, help=f"default {FULL_SIZE['batch_size']}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny towers at 32 px, 1 round, 2 steps (tests)")
    parser.add_argument("--force", action="store_true", help=f"run even with a 1-minute load average above {MAX_LOAD_AVERAGE}")
    parser.add_argument("--output_dir", default=str(RESULTS))
    arguments = parser.parse_args(argv)
    load = os.getloadavg()
    if load[0] > MAX_LOAD_AVERAGE and not arguments.force:
        print(f"error: 1-minute load average {load[0]:.2f} > {MAX_LOAD_AVERAGE}: timings would be meaningless; "
              "wait for a quiet machine or pass --force", file=sys.stderr)
        return 2
    size = dict(SMOKE_SIZE if arguments.smoke else FULL_SIZE)
    if arguments.batch_size:
        size["batch_size"] = arguments.batch_size
    rounds, warmup, steps = (1, 1, 2) if arguments.smoke else (arguments.rounds, arguments.warmup, arguments.steps)
    device = torch.device(arguments.device)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": rounds, "warmup": warmup, "steps": steps,
        "load_average_start": [round(value, 2) for value in load], "matmul_gflops": matmul_gflops(device),
    }
    results = run(size, rounds, warmup, steps, device)
    meta["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    write_report({"size": size, "meta": meta, "results": results}, Path(arguments.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
