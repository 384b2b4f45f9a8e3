"""Joint-embedding training steps: hf-ssl's six methods next to lightly's implementations, same backbone.

For each method (SimCLR, MoCo v3, BYOL, SimSiam, Barlow Twins, VICReg), backbone (ViT-S/16 at 224 px
and timm's ResNet-18 at 224 px by default), precision (fp32, bf16 autocast) and implementation,
one full training step is timed: forward of both views, loss, backward, AdamW step and, for
momentum methods, the EMA update. Inputs are random ``(B, 2, 3, H, W)`` tensors (the augmentation
pipeline is not part of the step).

- "hf-ssl": ``hf_ssl.recipes.build_model(method, backbone, size)`` with the published head sizes
  (both views in one backbone call).
- "lightly": lightly 1.6's heads, losses and ``update_momentum`` as in its examples (one backbone
  call per view), around the SAME backbone module (`hf_ssl.backbones.VisionBackbone` of the same
  config), with the same head sizes. lightly has no MoCo v3 model; that method has hf-ssl rows only.

Every measurement runs in its own subprocess (its own peak memory); rounds are interleaved and
repeated (the order reverses every round) and every sample is kept; the tables show the best
round (least disturbed) and the median. The fp32 / bf16 matrix-multiply rate of the host is
measured at the start, since absolute numbers belong to their host.

lightly is not a dependency of hf-ssl. Install it next to the checkout without touching the
environment and point the script at it:

    pip install --no-deps --target .lightly lightly
    python benchmarks/bench_joint_embedding.py --lightly_path .lightly
    python benchmarks/bench_joint_embedding.py --methods simclr byol --backbones timm/resnet18@224 --dtypes fp32

It refuses to run while the 1-minute load average is above 0.5 (another job would distort the
timings) unless ``--force``. Results: benchmarks/results/joint_embedding.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
METHODS = ("simclr", "moco_v3", "byol", "simsiam", "barlow_twins", "vicreg")
LIGHTLY_METHODS = ("simclr", "byol", "simsiam", "barlow_twins", "vicreg")
IMPLEMENTATIONS = ("hf-ssl", "lightly")
DTYPES = ("fp32", "bf16")
DEFAULT_BACKBONES = ("vit-small@224", "timm/resnet18@224")
MAXIMUM_LOAD_AVERAGE = 0.5
MOMENTUM = 0.99


def parse_backbone(text: str) -> tuple[str, int]:
    """``"vit-small@224"`` -> ``("vit-small", 224)``."""
    name, _, size = text.rpartition("@")
    if not name or not size.isdigit():
        raise argparse.ArgumentTypeError(f"backbone must be NAME@SIZE (e.g. vit-small@224), got {text!r}")
    return name, int(size)


# ----- the lightly side: its heads, losses and momentum update, as in its examples --------------------


class LightlyModel:
    """lightly's version of a method around an hf-ssl backbone module; ``step_loss(views)`` is its loss.

    Args:
        method: one of `LIGHTLY_METHODS`.
        config: the hf-ssl config of the same method, backbone and size: the backbone is built from
            it and the heads get its sizes, so that both sides compute the same network and only the
            method code differs.
    """

    def __init__(self, method: str, config):
        import copy

        from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss
        from lightly.models.modules import heads
        from lightly.models.utils import deactivate_requires_grad
        from torch import nn

        from hf_ssl.backbones import VisionBackbone

        backbone = VisionBackbone(config.backbone_config)
        width = backbone.feature_dimension
        hidden, output = config.projection_hidden_size, config.projection_dim
        self.method = method
        modules = {"backbone": backbone}
        if method == "simclr":
            modules["projection_head"] = heads.SimCLRProjectionHead(width, hidden, output)
            self.criterion = NTXentLoss(temperature=config.temperature)
        elif method == "byol":
            modules["projection_head"] = heads.BYOLProjectionHead(width, hidden, output)
            modules["prediction_head"] = heads.BYOLPredictionHead(output, config.prediction_hidden_size, output)
            modules["backbone_momentum"] = copy.deepcopy(backbone)
            modules["projection_head_momentum"] = copy.deepcopy(modules["projection_head"])
            deactivate_requires_grad(modules["backbone_momentum"])
            deactivate_requires_grad(modules["projection_head_momentum"])
            self.criterion = NegativeCosineSimilarity()
        elif method == "simsiam":
            modules["projection_head"] = heads.SimSiamProjectionHead(width, hidden, output)
            modules["prediction_head"] = heads.SimSiamPredictionHead(output, config.prediction_hidden_size, output)
            self.criterion = NegativeCosineSimilarity()
        elif method == "barlow_twins":
            modules["projection_head"] = heads.BarlowTwinsProjectionHead(width, hidden, output)
            self.criterion = BarlowTwinsLoss(lambda_param=config.redundancy_weight)
        elif method == "vicreg":
            modules["projection_head"] = heads.VICRegProjectionHead(width, hidden, output)
            self.criterion = VICRegLoss()
        else:
            raise ValueError(f"lightly has no {method} model; methods: {LIGHTLY_METHODS}")
        self.modules = nn.ModuleDict(modules)

    def step_loss(self, pixel_values):
        """The loss of lightly's example training step on ``(B, 2, C, H, W)`` views."""
        modules = self.modules
        first, second = pixel_values[:, 0], pixel_values[:, 1]
        if self.method == "byol":

            def online(views):
                return modules["prediction_head"](modules["projection_head"](modules["backbone"](views)))

            def target(views):
                return modules["projection_head_momentum"](modules["backbone_momentum"](views)).detach()

            return 0.5 * (self.criterion(online(first), target(second)) + self.criterion(online(second), target(first)))
        if self.method == "simsiam":
            projection_1 = modules["projection_head"](modules["backbone"](first))
            projection_2 = modules["projection_head"](modules["backbone"](second))
            prediction_1, prediction_2 = modules["prediction_head"](projection_1), modules["prediction_head"](projection_2)
            return 0.5 * (self.criterion(prediction_1, projection_2.detach()) + self.criterion(prediction_2, projection_1.detach()))
        embedding_1 = modules["projection_head"](modules["backbone"](first))
        embedding_2 = modules["projection_head"](modules["backbone"](second))
        return self.criterion(embedding_1, embedding_2)

    def after_step(self) -> None:
        if self.method == "byol":
            from lightly.models.utils import update_momentum

            update_momentum(self.modules["backbone"], self.modules["backbone_momentum"], m=MOMENTUM)
            update_momentum(self.modules["projection_head"], self.modules["projection_head_momentum"], m=MOMENTUM)


# ----- one measurement (worker subprocess) -------------------------------------------------------------


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kilobytes on Linux


def measure(method: str, implementation: str, backbone: str, dtype: str, batch_size: int, warmup: int, steps: int,
            device: str) -> dict:
    """Seconds per training step and peak memory of one configuration, in this process."""
    import torch

    from hf_ssl.recipes import build_model

    name, image_size = parse_backbone(backbone)
    torch.manual_seed(0)
    if implementation == "hf-ssl":
        network = build_model(method, name, image_size)

        def step_loss(pixel_values):
            return network(pixel_values).loss

        def after_step():
            if hasattr(network, "update_momentum_encoder"):
                network.update_momentum_encoder(MOMENTUM)
    else:
        with torch.device("meta"):  # the config only: no memory spent on the hf-ssl model
            config = build_model(method, name, image_size).config
        lightly_model = LightlyModel(method, config)
        network, step_loss, after_step = lightly_model.modules, lightly_model.step_loss, lightly_model.after_step
    network.to(device).train()
    parameters = [parameter for parameter in network.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.1)
    pixel_values = torch.randn(batch_size, 2, 3, image_size, image_size, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    memory_before = _peak_memory_mb(device) if device == "cuda" else None
    resident_after_build = _resident_mb()
    durations = []
    for index in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = step_loss(pixel_values)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after_step()
        if device == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            durations.append(time.perf_counter() - start)
    peak = _peak_memory_mb(device)
    seconds = statistics.median(durations)
    return {
        "method": method,
        "implementation": implementation,
        "backbone": backbone,
        "dtype": dtype,
        "device": device,
        "batch_size": batch_size,
        "views": 2,
        "seconds_per_step": seconds,
        "images_per_second": batch_size / seconds,
        "peak_memory_mb": peak,
        "training_memory_mb": peak - (memory_before if device == "cuda" else resident_after_build),
        "trainable_parameters_millions": sum(parameter.numel() for parameter in parameters) / 1e6,
        "loss": float(loss.detach()),
    }


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_rates() -> dict[str, float]:
    """GFLOP/s of a 1024^3 matrix product in fp32 and bf16 on this host, now."""
    import torch

    rates = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        left, right = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        left @ right
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(5):
                left @ right
            best = min(best, (time.perf_counter() - start) / 5)
        rates[label] = 2 * 1024**3 / best / 1e9
    return rates


# ----- driver ----------------------------------------------------------------------------------------


def _worker_command(args, method: str, implementation: str, backbone: str, dtype: str) -> list[str]:
    return [sys.executable, __file__, "--worker", method, implementation, backbone, dtype,
            "--batch_size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--device", args.device] + (["--lightly_path", str(args.lightly_path)] if args.lightly_path else [])


def _markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# Joint-embedding training step: hf-ssl vs lightly, same backbone",
        "",
        f"Generated by `benchmarks/bench_joint_embedding.py` on {meta['device']} ({meta['platform']}, {meta['cpu_threads']} "
        f"threads), torch {meta['torch']}, lightly {meta['lightly']}; batch {meta['batch_size']} images x 2 views, "
        f"{meta['warmup']} warm-up + {meta['steps']} timed steps (median), {meta['repeats']} interleaved rounds; host "
        f"matmul {meta['matmul_gflops']['fp32']:.1f} GFLOP/s fp32, {meta['matmul_gflops']['bf16']:.1f} bf16; load average "
        f"{meta['load_average_start']} at start, {meta['load_average_end']} at the end.",
        "",
        "A step: both views forward, loss, backward, AdamW, EMA update (MoCo v3, BYOL). hf-ssl encodes both views in one "
        "backbone call; lightly's examples call the backbone once per view.",
        "",
        "| backbone | dtype | method | implementation | images/s (best) | images/s (median) | x lightly | peak memory (MB) "
        "| training memory (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        ratio = row.get("speed_vs_lightly")
        lines.append(
            f"| {row['backbone']} | {row['dtype']} | {row['method']} | {row['implementation']} | "
            f"{row['images_per_second']:.2f} | {row['median_images_per_second']:.2f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {row['peak_memory_mb']:.0f} | {row['training_memory_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES), type=str,
                        help="NAME@SIZE: a preset, transformers folder or timm/<name>, and the image side")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--batch_size", type=int, default=8, help="images per step (each gives two views)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--lightly_path", type=Path, default=None,
                        help="folder holding lightly (pip install --no-deps --target <folder> lightly)")
    parser.add_argument("--output_dir", type=Path, default=RESULTS)
    parser.add_argument("--force", action="store_true", help=f"run even when the 1-minute load average > {MAXIMUM_LOAD_AVERAGE}")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny check that everything runs: SimCLR and BYOL, vit-micro@32, fp32, batch 4, 1 step, 1 round")
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "IMPLEMENTATION", "BACKBONE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lightly_path is not None:
        sys.path.insert(0, str(args.lightly_path.resolve()))
    if args.worker:
        print(json.dumps(measure(*args.worker, args.batch_size, args.warmup, args.steps, args.device)))
        return 0

    if args.smoke:
        args.methods, args.backbones, args.dtypes, args.batch_size, args.warmup, args.steps, args.repeats = (
            ["simclr", "byol"], ["vit-micro@32"], ["fp32"], 4, 0, 1, 1)
    for backbone in args.backbones:
        try:
            parse_backbone(backbone)
        except argparse.ArgumentTypeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    load_average = os.getloadavg()[0]
    if load_average > MAXIMUM_LOAD_AVERAGE and not args.force:
        print(f"error: the 1-minute load average is {load_average:.2f} (> {MAXIMUM_LOAD_AVERAGE}): timings would measure "
              "the other jobs; wait for a quiet machine or pass --force", file=sys.stderr)
        return 2
    lightly_version = None
    if "lightly" in args.implementations:
        try:
            import lightly
        except ImportError:
            print("error: lightly is not importable: pip install --no-deps --target .lightly lightly, then pass "
                  "--lightly_path .lightly (or --implementations hf-ssl)", file=sys.stderr)
            return 2
        lightly_version = lightly.__version__

    import torch

    configurations = [
        (method, implementation, backbone, dtype)
        for backbone in args.backbones
        for dtype in args.dtypes
        for method in args.methods
        for implementation in args.implementations
        if implementation == "hf-ssl" or method in LIGHTLY_METHODS
    ]
    meta = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "platform": f"{platform.machine()}, {os.cpu_count()} cores visible",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightly": lightly_version,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
        "matmul_gflops": matmul_rates(),
        "load_average_start": [round(value, 2) for value in os.getloadavg()],
    }
    samples: dict[tuple, list[dict]] = {}
    for repeat in range(args.repeats):
        order = configurations if repeat % 2 == 0 else list(reversed(configurations))
        for configuration in order:
            completed = subprocess.run(_worker_command(args, *configuration), capture_output=True, text=True)
            if completed.returncode != 0:
                print(f"error: {' '.join(configuration)} failed:\n{completed.stderr[-2000:]}", file=sys.stderr)
                return 1
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            samples.setdefault(configuration, []).append(result)
            print(f"round {repeat + 1}: {' | '.join(configuration):55s} {result['images_per_second']:8.2f} img/s  "
                  f"peak {result['peak_memory_mb']:7.0f} MB", flush=True)
    meta["load_average_end"] = [round(value, 2) for value in os.getloadavg()]

    rows = []
    for configuration, results in samples.items():
        best = max(results, key=lambda result: result["images_per_second"])
        rows.append({
            **best,
            "median_images_per_second": statistics.median(result["images_per_second"] for result in results),
            "all_images_per_second": [result["images_per_second"] for result in results],
        })
    best_by_key = {(row["method"], row["implementation"], row["backbone"], row["dtype"]): row for row in rows}
    for row in rows:
        reference = best_by_key.get((row["method"], "lightly", row["backbone"], row["dtype"]))
        if reference is not None:
            row["speed_vs_lightly"] = row["images_per_second"] / reference["images_per_second"]
            row["memory_vs_lightly"] = row["training_memory_mb"] / max(reference["training_memory_mb"], 1e-9)
    report = {"benchmark": "joint-embedding training step", "meta": meta, "results": rows}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "joint_embedding.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = _markdown(report)
    (args.output_dir / "joint_embedding.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
