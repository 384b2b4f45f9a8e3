"""DINO training throughput and peak memory: hf-ssl's `BackboneForDINO` next to lightly's DINO.

Both sides train the same backbone (hf-ssl's `VisionBackbone` of a preset: transformers' `ViTModel`,
CLS token, position embeddings interpolated for the local crops), the same head sizes (K = 65,536,
hidden 2048, bottleneck 256, 3 layers, weight-normalised last layer), the same crops (2 x 224 +
6 x 96 by default) and batch, with AdamW, gradient clipping at 3.0 and the EMA teacher update in
every step. What differs is the method code:

- hf-ssl: `BackboneForDINO.forward` (one backbone call per resolution, one head call for all
  student crops, `dino_loss`, the centre update), then the recipe's hooks (`after_backward`,
  `after_optimizer_step`);
- lightly (``pip install --no-deps --target DIR lightly``, then ``--lightly_path DIR``): its
  documented DINO example (docs.lightly.ai/self-supervised-learning/examples/dino.html):
  `DINOProjectionHead`, `DINOLoss`, `update_momentum`, one forward per view.

Each training step runs on random normalised crops (the data pipeline is not timed). The two
sides are timed in the same process, their steps interleaved round by round so that a change in
machine load hits both; fp32 and bf16 autocast. Peak memory is measured for each side in a fresh
process: the growth of peak resident memory (Linux VmHWM, reset after start-up) over the first
training steps, or `torch.cuda.max_memory_allocated` on CUDA.

Timings are only meaningful on a quiet machine: the script refuses to start when the 1-minute load
average is above 0.5 unless ``--force``.

    PYTHONPATH=.lightly python benchmarks/bench_dino.py --lightly_path .lightly
    python benchmarks/bench_dino.py --implementations hf-ssl --backbones vit-tiny   # without lightly
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_reconstruction import _resident_kib  # the same VmRSS / VmHWM reader

REPO = Path(__file__).resolve().parents[1]
IMPLEMENTATIONS = ("hf-ssl", "lightly")
PRECISIONS = ("fp32", "bf16")
BACKBONE_NAMES = {"vit-small": "ViT-S/16", "vit-tiny": "ViT-Tiny/16", "vit-micro": "ViT-micro"}
MAX_LOAD_AVERAGE = 0.5


def _head_sizes(settings: dict) -> dict:
    return dict(head_output_dim=settings["output_dim"], head_hidden_dim=settings["hidden_dim"],
                head_bottleneck_dim=settings["bottleneck_dim"])


class LightlyDINO(torch.nn.Module):
    """lightly's documented DINO module around a given student backbone."""

    def __init__(self, backbone: torch.nn.Module, feature_dimension: int, settings: dict):
        super().__init__()
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        sizes = dict(hidden_dim=settings["hidden_dim"], bottleneck_dim=settings["bottleneck_dim"],
                     output_dim=settings["output_dim"])
        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(feature_dimension, freeze_last_layer=1, **sizes)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(feature_dimension, **sizes)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        return self.student_head(self.student_backbone(view).flatten(start_dim=1))

    def forward_teacher(self, view: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(view).flatten(start_dim=1))


def build(implementation: str, settings: dict, device: str):
    """``(model, step)``: a model and a closure running one full training step on fixed random crops."""
    import hf_ssl  # noqa: F401
    from hf_ssl.recipes import StepContext, build_model, get_recipe

    torch.manual_seed(0)
    ours = build_model("dino", settings["backbone"], settings["image_size"], _head_sizes(settings))
    generator = torch.Generator().manual_seed(0)
    batch, size, local_size = settings["batch_size"], settings["image_size"], settings["local_crop_size"]
    global_crops = torch.randn(batch, 2, 3, size, size, generator=generator).to(device)
    local_crops = torch.randn(batch, settings["local_crops_number"], 3, local_size, local_size, generator=generator).to(device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=settings["precision"] == "bf16")
    values = {"teacher_temperature": 0.04, "ema_momentum": 0.996, "last_layer_frozen": 0.0}

    if implementation == "hf-ssl":
        recipe = get_recipe("dino")
        model = ours.to(device).train()
        optimizer = torch.optim.AdamW(recipe.parameter_groups(model, 0.04), lr=1e-4)
        context = StepContext(step=0, max_steps=1, values=values)

        def step() -> None:
            with autocast:
                loss = model(global_crops, local_crops if local_crops.shape[1] else None, values["teacher_temperature"]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            recipe.after_backward(model, context)
            optimizer.step()
            recipe.after_optimizer_step(model, context)

        return model, step

    from lightly.loss import DINOLoss
    from lightly.models.utils import update_momentum

    backbone = ours.student.backbone  # the same transformers ViTModel + CLS pooling as hf-ssl's
    model = LightlyDINO(backbone, backbone.feature_dimension, settings).to(device).train()
    criterion = DINOLoss(output_dim=settings["output_dim"]).to(device)
    optimizer = torch.optim.AdamW(
        [parameter for parameter in model.parameters() if parameter.requires_grad], lr=1e-4, weight_decay=0.04
    )
    views = [global_crops[:, 0], global_crops[:, 1], *local_crops.unbind(1)]

    def step() -> None:
        update_momentum(model.student_backbone, model.teacher_backbone, m=values["ema_momentum"])
        update_momentum(model.student_head, model.teacher_head, m=values["ema_momentum"])
        with autocast:
            teacher_out = [model.forward_teacher(view) for view in views[:2]]
            student_out = [model.forward(view) for view in views]
            loss = criterion(teacher_out, student_out, teacher_temp=values["teacher_temperature"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        model.student_head.cancel_last_layer_gradients(current_epoch=1)
        optimizer.step()

    return model, step


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(settings: dict, implementations: list[str], device: str) -> dict[str, list[float]]:
    """Images per second of each implementation, one value per round, steps interleaved."""
    steps = {name: build(name, settings, device)[1] for name in implementations}
    for _ in range(settings["warmup_steps"]):
        for step in steps.values():
            step()
    per_round = {name: [] for name in implementations}
    for _ in range(settings["rounds"]):
        for name, step in steps.items():
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(settings["steps_per_round"]):
                step()
            _synchronize(device)
            per_round[name].append(settings["batch_size"] * settings["steps_per_round"] / (time.perf_counter() - start))
    return per_round


def _peak_memory_worker(implementation: str, settings: dict, device: str, lightly_path: str | None, queue) -> None:
    if lightly_path:
        sys.path.insert(0, lightly_path)
    torch.set_num_threads(settings["threads"])
    _, step = build(implementation, settings, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        start = _resident_kib("VmRSS") * 1024
    for _ in range(settings["memory_steps"]):
        step()
    _synchronize(device)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _resident_kib("VmHWM") * 1024
    queue.put((peak - start) / 2**20)


def peak_memory_mib(implementation: str, settings: dict, device: str, lightly_path: str | None) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_memory_worker, args=(implementation, settings, device, lightly_path, queue))
    process.start()
    value = queue.get()
    process.join()
    return value


def matmul_gflops(device: str, dtype: torch.dtype) -> float:
    """This machine's matrix-multiply rate right now (the yardstick for the absolute numbers)."""
    left, right = torch.randn(1024, 1024, device=device, dtype=dtype), torch.randn(1024, 1024, device=device, dtype=dtype)
    for _ in range(3):
        left @ right
    _synchronize(device)
    repeats, start = 20, time.perf_counter()
    for _ in range(repeats):
        left @ right
    _synchronize(device)
    return repeats * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


def write_markdown(results: dict, path: Path) -> None:
    meta = results["meta"]
    implementations = meta["implementations"]
    lines = [
        "# DINO: training throughput and peak memory",
        "",
        f"Generated by `benchmarks/bench_dino.py` on {meta['device_description']}, torch {meta['torch']}, "
        f"transformers {meta['transformers']}, lightly {meta['lightly'] or 'not run'}, {meta['threads']} threads; "
        f"batch {meta['batch_size']}, 2 x {meta['image_size']} px + {meta['local_crops_number']} x "
        f"{meta['local_crop_size']} px crops, K = {meta['output_dim']}; {meta['warmup_steps']} warm-up steps, then "
        f"{meta['rounds']} interleaved rounds of {meta['steps_per_round']} steps (median shown); matmul "
        f"{meta['matmul_gflops']['fp32']:.0f} GFLOP/s fp32, {meta['matmul_gflops']['bf16']:.0f} bf16; load average "
        f"{meta['load_average_start']} at start, {meta['load_average_end']} at the end.",
        "",
        "| backbone | precision | " + " | ".join(f"{name} img/s" for name in implementations)
        + (" | speed ratio (hf-ssl / lightly)" if len(implementations) == 2 else "")
        + " | " + " | ".join(f"{name} peak MiB" for name in implementations) + " |",
        "|---|---|" + "---:|" * (2 * len(implementations) + (len(implementations) == 2)),
    ]
    for row in results["rows"]:
        cells = [f"{row[name]['images_per_second']:.2f}" for name in implementations]
        if len(implementations) == 2:
            cells.append(f"{row['speed_ratio']:.3f}")
        cells += [f"{row[name]['peak_memory_mib']:.0f}" for name in implementations]
        lines.append(f"| {BACKBONE_NAMES.get(row['backbone'], row['backbone'])} | {row['precision']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Both sides train the same transformers `ViTModel` (CLS token, position embeddings interpolated for the",
        "local crops) with the same head sizes, crops, batch, AdamW, clipping (3.0) and EMA teacher update; hf-ssl",
        "runs each resolution as one batch, lightly's example one forward per view. Peak memory is the growth of",
        "the peak resident set (CUDA: peak allocated) over the first training steps, in a fresh process per side.",
    ]
    path.write_text("\n".join(lines) + "\n")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["vit-small", "vit-tiny"])
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--local_crop_size", type=int, default=96)
    parser.add_argument("--local_crops_number", type=int, default=6)
    parser.add_argument("--output_dim", type=int, default=65536, help="K, the number of prototypes")
    parser.add_argument("--hidden_dim", type=int, default=2048)
    parser.add_argument("--bottleneck_dim", type=int, default=256)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps_per_round", type=int, default=3)
    parser.add_argument("--memory_steps", type=int, default=2, help="steps per side when measuring peak memory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lightly_path", default=None, help="folder lightly was installed into (pip --target)")
    parser.add_argument("--output_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--force", action="store_true", help=f"run even when the load average is above {MAX_LOAD_AVERAGE}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    load = os.getloadavg()[0]
    if load > MAX_LOAD_AVERAGE and not args.force:
        print(f"error: the 1-minute load average is {load:.2f} > {MAX_LOAD_AVERAGE}: timings would measure the other "
              "work on this machine; wait for a quiet machine or pass --force", file=sys.stderr)
        return 2
    if args.lightly_path:
        sys.path.insert(0, args.lightly_path)
    lightly_version = None
    if "lightly" in args.implementations:
        try:
            import lightly
        except ImportError:
            print("error: lightly is not importable: install it with `pip install --no-deps --target DIR lightly` and "
                  "pass --lightly_path DIR, or run --implementations hf-ssl", file=sys.stderr)
            return 2
        lightly_version = lightly.__version__
    import transformers

    device_description = (torch.cuda.get_device_name() if args.device == "cuda"
                          else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)")
    meta = {
        **{name: getattr(args, name) for name in ("implementations", "backbones", "precisions", "batch_size", "image_size",
                                                  "local_crop_size", "local_crops_number", "output_dim", "hidden_dim",
                                                  "bottleneck_dim", "warmup_steps", "rounds", "steps_per_round",
                                                  "memory_steps", "device")},
        "device_description": device_description, "torch": torch.__version__, "transformers": transformers.__version__,
        "lightly": lightly_version, "threads": torch.get_num_threads(),
        "load_average_start": [round(value, 2) for value in os.getloadavg()],
        "matmul_gflops": {"fp32": matmul_gflops(args.device, torch.float32), "bf16": matmul_gflops(args.device, torch.bfloat16)},
    }
    rows = []
    for backbone in args.backbones:
        for precision in args.precisions:
            settings = {**meta, "backbone": backbone, "precision": precision}
            started = time.perf_counter()
            per_round = time_interleaved(settings, args.implementations, args.device)
            row = {"backbone": backbone, "precision": precision}
            for name in args.implementations:
                row[name] = {"images_per_second": statistics.median(per_round[name]), "per_round": per_round[name],
                             "peak_memory_mib": peak_memory_mib(name, settings, args.device, args.lightly_path)}
            if len(args.implementations) == 2:
                row["speed_ratio"] = row["hf-ssl"]["images_per_second"] / row["lightly"]["images_per_second"]
            rows.append(row)
            print(f"{backbone} {precision}: {json.dumps(row)} ({time.perf_counter() - started:.0f} s)", flush=True)
    meta["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    results = {"meta": meta, "rows": rows}
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "dino.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, output_dir / "dino.md")
    print((output_dir / "dino.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
