"""Fine-tune an encoder into a model for a downstream task and save it for the ecosystem (``hf-ssl finetune``).

    hf-ssl finetune --task segmentation --model runs/splitmask-vit-micro                 # the bundled digit scenes
    hf-ssl finetune --task segmentation --model runs/x --data my-scans/ --output_dir runs/x-seg
    hf-ssl finetune --task segmentation --model runs/x --data my-org/scans --mask_column annotation
    hf-ssl finetune --task segmentation --model runs/x --random_init                     # the supervised baseline

--model is a run folder, a backbone folder or a Hub repo id. --data is a folder of images and PNG
masks (images/ + masks/, a mask named like its image, pixel values = class indices, 0 the
background, 255 unlabelled; optional classes.txt naming class k on line k; or the same under
train/ and test/), a `datasets` dataset with an image and a mask column (a Hub id or a
save_to_disk folder), or, by default, the bundled digit scenes. Without a test split a seeded
fifth of the images is held out. The output folder loads with AutoModelForSemanticSegmentation and
pipeline("image-segmentation"), without hf-ssl too (trust_remote_code=True), and has a model card
with the test mean IoU, per-class IoUs and a figure of predictions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from hf_ssl.command_line import CommandParser
from hf_ssl.eval.finetune import FinetuneSettings
from hf_ssl.eval.protocol import add_settings_arguments, settings_values
from hf_ssl.local_paths import check_local_path

TASKS = ("segmentation",)
SETTINGS_PREFIX = "finetune"


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = CommandParser(prog="hf-ssl finetune", description=__doc__)
    parser.add_argument("--task", required=True, choices=TASKS,
                        help="segmentation: an encoder + deconvolution decoder trained on per-pixel masks")
    parser.add_argument("--model", required=True, help="run folder, backbone folder or Hub repo id")
    parser.add_argument("--data", "--dataset_name", dest="data", default=None,
                        help="folder of images/ + masks/, a datasets name or save_to_disk folder (default: the bundled digit scenes)")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--mask_column", default="mask", help="per-pixel class images (PNG); 255 = unlabelled")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default="test",
                        help="held out of the train split (a seeded fifth) when the data has no such split")
    parser.add_argument("--class_names", nargs="+", default=None,
                        help="class k's name at position k, background first (default: classes.txt or the data's)")
    parser.add_argument("--image_size", type=int, default=None, help="training side in pixels (default: the model's image processor's)")
    parser.add_argument("--random_init", action="store_true",
                        help="the same architecture untrained: the supervised baseline to compare with")
    parser.add_argument("--output_dir", default=None, help="default: <model>-segmentation next to a local model, else ./<name>-segmentation")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="write into an output folder that is not empty")
    parser.add_argument("--max_samples", type=int, default=None, help="cap on images per split (quick checks)")
    parser.add_argument("--no_figure", action="store_true", help="skip predictions.png")
    parser.add_argument("--seed", type=int, default=0)
    add_settings_arguments(parser, SETTINGS_PREFIX, FinetuneSettings)
    arguments = parser.parse_args(argv)
    try:
        check_local_path(arguments.model, "--model")
        if arguments.data is not None:
            check_local_path(arguments.data, "--data")
        for name in ("image_size", "max_samples"):
            if getattr(arguments, name) is not None and getattr(arguments, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(arguments, name)}")
        given = {key: value for key, value in settings_values(arguments, SETTINGS_PREFIX, FinetuneSettings).items()
                 if value is not None}
        arguments.settings = FinetuneSettings(**given)
        if arguments.random_init and "layer_decay" not in given:  # as the protocols train their supervised baseline
            arguments.settings = arguments.settings.for_random_init()
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    arguments.output_dir = Path(arguments.output_dir or default_output_dir(arguments.model, arguments.random_init))
    if arguments.output_dir.is_dir() and any(arguments.output_dir.iterdir()) and not arguments.overwrite_output_dir:
        parser.error(f"--output_dir {arguments.output_dir} is not empty (--overwrite_output_dir to write into it)")
    return arguments


def default_output_dir(model: str, random_init: bool) -> Path:
    """``<model>-segmentation`` beside a local model, ``./<repo name>-segmentation`` for a Hub id."""
    suffix = "-random-init-segmentation" if random_init else "-segmentation"
    local = Path(model)
    if local.is_dir():
        base = local.resolve()
        base = base.parent if base.name == "backbone" else base  # a run folder's exported encoder
        return base.parent / f"{base.name}{suffix}"
    return Path(f"{model.rstrip('/').split('/')[-1]}{suffix}")


class StopOnSignal:
    """SIGINT / SIGTERM end training after the current step; the best weights so far are saved."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame) -> None:
        if self.received is None:
            print(f"\n{signal.Signals(number).name} received: stopping after this step and saving the best model so far",
                  file=sys.stderr)
        self.received = number

    def __call__(self) -> bool:
        return self.received is not None

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(arguments)
    except (ValueError, OSError) as error:  # bad model path, unsafe checkpoint, missing column, bad masks ...
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2


def run(arguments: argparse.Namespace) -> int:
    import torch

    from hf_ssl.backbones import segmentation_image_processor
    from hf_ssl.backbones.loading import load_backbone
    from hf_ssl.data.segmentation import load_segmentation_splits
    from hf_ssl.eval.data import image_processor_for
    from hf_ssl.eval.runner import random_init_like
    from hf_ssl.eval.segmentation_model import (
        FIGURE_FILE,
        prepare_segmentation_data,
        save_prediction_figure,
        save_segmentation_model,
        train_segmentation_model,
    )
    from hf_ssl.hub import build_segmentation_card

    torch.manual_seed(arguments.seed)
    encoder = load_backbone(arguments.model)
    if arguments.random_init:
        encoder = random_init_like(encoder, arguments.seed)
    try:
        backbone_processor = image_processor_for(arguments.model)
    except OSError:  # a checkpoint without a processor: ImageNet normalisation at the config's size
        backbone_processor = None
    if backbone_processor is None and arguments.image_size is None:
        size = getattr(getattr(encoder, "config", None), "image_size", None)
        arguments.image_size = int(size[0] if isinstance(size, (list, tuple)) else size) if size else None
    image_processor = segmentation_image_processor(backbone_processor, arguments.image_size)
    splits = load_segmentation_splits(arguments.data, arguments.image_column, arguments.mask_column,
                                      arguments.train_split, arguments.test_split, arguments.max_samples, arguments.seed)
    if arguments.class_names:
        splits = dataclasses.replace(splits, class_names=tuple(arguments.class_names))
    data = prepare_segmentation_data(splits, image_processor)
    side = data.train_pixels.shape[-1]
    print(plan(arguments, encoder, data, side))

    with StopOnSignal() as stop:
        model, metrics = train_segmentation_model(encoder, data, arguments.settings, arguments.seed, progress=True,
                                                  stop_requested=stop)
    result = {**metrics, "protocol": "segmentation_finetune", "task_type": "image-segmentation",
              "dataset": splits.description, "split": arguments.test_split if not splits.held_out else "held-out fifth",
              "label_setting": "all", "held_out": splits.held_out, "num_train_images": len(data.train_pixels),
              "num_test_images": len(data.test_pixels), "random_init": arguments.random_init}
    finetune_args = {"task": arguments.task, "model": arguments.model, "data": arguments.data,
                     "random_init": arguments.random_init, "image_size": side, "seed": arguments.seed,
                     "max_samples": arguments.max_samples, "settings": dataclasses.asdict(arguments.settings)}
    output_dir = save_segmentation_model(model, image_processor, arguments.output_dir, result, finetune_args)
    if not arguments.no_figure:
        save_prediction_figure(model, data, image_processor, output_dir / FIGURE_FILE)
    build_segmentation_card(output_dir).save(output_dir / "README.md")
    print(summary(result, output_dir, stop.received))
    return 128 + stop.received if stop.received is not None else 0


def plan(arguments: argparse.Namespace, encoder, data, side: int) -> str:
    """What is about to run, in a few lines."""
    from hf_ssl.eval.segmentation_model import planned_steps

    settings = arguments.settings
    parameters = sum(parameter.numel() for parameter in encoder.parameters())
    weights = "random init (the supervised baseline)" if arguments.random_init else "pre-trained weights"
    steps, fitted = planned_steps(data, settings, arguments.seed)
    budget = f"{steps} steps ({fitted} images; {len(data.train_pixels) - fitted} validate)"
    held_out = " (test: a seeded fifth held out)" if data.splits.held_out else ""
    return "\n".join([
        "hf-ssl finetune --task segmentation",
        f"  model     {arguments.model}: {type(encoder).__name__}, {parameters / 1e6:.2f} M parameters, {weights}",
        f"  data      {data.splits.description}: {len(data.train_pixels)} train / {len(data.test_pixels)} test images"
        f"{held_out}, resized to {side}x{side}, {data.num_classes} classes ({', '.join(data.class_names[:6])}"
        f"{', ...' if data.num_classes > 6 else ''})",
        f"  training  up to {budget}, batch {settings.batch_size}, AdamW lr {settings.learning_rate:g}, layer decay "
        f"{settings.layer_decay}, early stopping on a validation fifth's mean IoU ({settings.evaluations} checks, "
        f"patience {settings.patience}); augmentation {settings.augmentation}",
        f"  output    {arguments.output_dir}",
    ])


def summary(result: dict, output_dir: Path, stopped_by: int | None) -> str:
    stopped = f"stopped by {signal.Signals(stopped_by).name} at step {result['steps']}; " if stopped_by else ""
    validation = result.get("validation_mean_iou")
    lines = [
        f"test mean IoU {100 * result['mean_iou']:.2f} %, pixel accuracy {100 * result['pixel_accuracy']:.2f} % "
        f"({stopped}best validation mean IoU "
        f"{'-' if validation is None else f'{100 * validation:.2f} %'} at step {result['best_step']} of {result['steps']})",
        f"saved {output_dir} (model card README.md); load it with",
        f"  pipeline(\"image-segmentation\", model={json.dumps(str(output_dir))}, trust_remote_code=True)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
