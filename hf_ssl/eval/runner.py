"""Evaluate a run folder, a backbone folder or a Hub repo with the registered protocols, next to its
baselines, and write eval_results.json.

Every result carries the same protocol, labels and split measured on the baselines a reader needs
to believe it (`BASELINES`):

- ``random_init``: the same architecture, untrained. For fine-tuning this is training from random
  init with the row's labels, i.e. the supervised model.
- ``raw_pixels``: the flattened pixels minus the mean training image (kNN, linear probe), or a
  linear classifier on them for fine-tuning (the head alone, with nothing below it to tune); for
  segmentation, the linear layer on each small cell's pixels.
- ``supervised``: the same architecture trained from random init on the row's labels (the
  fine-tuning protocol): an upper reference, not a bar a label-free method must clear. If it
  sits near chance the protocol or the backbone is wrong, not the pre-training right. It stands
  beside the rows scored by accuracy; segmentation fine-tuning from random init is its own
  supervised model (mean IoU), and the frozen segmentation rows have none.
- ``pretrained:<model>``: any other transformers / timm checkpoint (an ImageNet model, say),
  preprocessed with its own image processor: the alternative a user actually weighs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel

from hf_ssl.backbones.loading import load_backbone
from hf_ssl.training.arguments import PRETRAINED_BASELINE_PREFIX, REPORT_BASELINES

from . import finetune as _finetune  # noqa: F401  (each protocol module registers itself)
from . import knn as _knn  # noqa: F401
from . import linear_probe as _linear_probe  # noqa: F401
from . import retrieval as _retrieval  # noqa: F401
from . import segmentation as _segmentation  # noqa: F401
from . import segmentation_finetune as _segmentation_finetune  # noqa: F401
from . import zero_shot as _zero_shot  # noqa: F401
from .candidates import Candidate
from .data import DataSelection, LabelledData, default_dataset_name, image_processor_for
from .features import Pooling, _encoder_of
from .low_label import low_label_indices, parse_label_setting
from .protocol import available_protocols, get_protocol

logger = logging.getLogger(__name__)

# What an encoder is compared with, the end-of-run report's default (`--report_baselines`).
BASELINES = REPORT_BASELINES
PRETRAINED_PREFIX = PRETRAINED_BASELINE_PREFIX


def random_init_like(backbone: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised encoder of the same architecture (the random-init baseline): rebuilt
    from its config (transformers models), or a copy with every layer's parameters reset (timm modules)."""
    encoder = _encoder_of(backbone)
    torch.manual_seed(seed)
    if getattr(encoder, "config", None) is not None:
        return AutoModel.from_config(encoder.config)
    fresh = copy.deepcopy(encoder)
    for module in fresh.modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
    return fresh


def check_baselines(baselines: Sequence[str]) -> None:
    """Raise ValueError for a name that is neither in `BASELINES` nor ``pretrained:<model>``."""
    unknown = [name for name in baselines if name not in BASELINES and not name.startswith(PRETRAINED_PREFIX)]
    if unknown or any(name == PRETRAINED_PREFIX for name in baselines):
        raise ValueError(f"baselines must be among {BASELINES} or {PRETRAINED_PREFIX}<model folder or Hub id>, got "
                         f"{unknown or [PRETRAINED_PREFIX]}")


def _label_subset(labels: torch.Tensor, setting: str, seed: int) -> tuple[torch.Tensor, str]:
    parsed = parse_label_setting(setting)
    if not parsed:
        return torch.arange(len(labels)), ""
    return low_label_indices(labels, seed=seed, **parsed), f"-{setting}"


def evaluate_model(
    model_path: str | os.PathLike,
    protocols: Sequence[str] = ("knn", "linear"),
    data: DataSelection | None = None,
    label_settings: Sequence[str] = ("all",),
    baselines: Sequence[str] = (),
    settings: dict[str, object] | None = None,
    pooling: Pooling = "mean",
    random_init: bool = False,
    feature_cache_dir: str | os.PathLike | None = None,
    output_file: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, dict]:
    """Run `protocols` on a model and its `baselines`; return (and merge into `output_file`) the results.

    Args:
        model_path: a run folder, a backbone folder or a Hub repo id.
        protocols: registered protocol names (`hf_ssl.eval.protocol.available_protocols`).
        data: the labelled images (default: the bundled data a run folder was trained on, else the
            bundled digit scenes).
        label_settings: labelled part of the training split per evaluation: ``"all"``, ``"10%"``,
            ``"1%"``, ``"1-per-class"``...; results of a low-label setting are stored under
            ``"<protocol>-<setting>"``. Image-text protocols use no labels and run once.
        baselines: any of `BASELINES` and ``pretrained:<model>``; each result then carries
            ``"baselines": {name: top-1}`` measured with the same protocol, labels and split.
        settings: ``{protocol name: its settings object}``; missing ones take the protocol's defaults.
        pooling: ``"mean"`` of patch tokens or the ``"cls"`` token, for every encoder.
        random_init: evaluate a randomly initialised encoder of the same architecture instead.
        feature_cache_dir: keep the evaluated encoder's frozen features here.
        output_file: JSON file to merge the results into (e.g. ``run_dir/eval_results.json``).

    Returns:
        ``{"knn": {"accuracy", ..., "dataset", "split", "baselines": {...}}, "linear-10%": {...}, ...}``.
    """
    data = data or DataSelection(default_dataset_name(model_path))
    protocols = [get_protocol(name) for name in protocols]
    check_baselines(baselines)
    given = settings or {}
    settings = {protocol.name: given.get(protocol.name) or protocol.settings() for protocol in protocols}
    settings.setdefault("finetune", given.get("finetune") or get_protocol("finetune").settings())  # the supervised baseline
    results: dict[str, dict] = {}
    common = {"dataset": data.label, "split": data.test_split, "random_init": random_init}
    for protocol in [protocol for protocol in protocols if protocol.image_text]:
        result = protocol.evaluate_folder(str(model_path), data, settings[protocol.name], random_init, seed)
        if "random_init" in baselines and not random_init:
            untrained = protocol.evaluate_folder(str(model_path), data, settings[protocol.name], True, seed)
            result["baselines"] = {"random_init": untrained[next(iter(untrained))]}
        results[protocol.name] = {**result, **common, **protocol.details(settings[protocol.name])}
    labelled = [protocol for protocol in protocols if not protocol.image_text]
    if labelled:
        results.update(_evaluate_labelled(model_path, labelled, data, label_settings, baselines, settings, pooling,
                                          random_init, feature_cache_dir, seed, common))
    merge_results(output_file, results)
    return results


def _evaluate_labelled(model_path, protocols, data: DataSelection, label_settings, baselines, settings, pooling,
                       random_init: bool, feature_cache_dir, seed: int, common: dict) -> dict[str, dict]:
    backbone = load_backbone(model_path)
    if random_init:
        backbone = random_init_like(backbone, seed)
    labelled = LabelledData.load(data, image_processor_for(model_path))
    subject = Candidate("encoder", backbone, pooling, Path(feature_cache_dir) if feature_cache_dir else None)
    candidates = {}
    if "random_init" in baselines or "supervised" in baselines:
        candidates["random_init"] = Candidate("random_init", random_init_like(backbone, seed), pooling)
    if "raw_pixels" in baselines:
        candidates["raw_pixels"] = Candidate("raw_pixels", None)
    own_data = {}
    for name in baselines:
        if name.startswith(PRETRAINED_PREFIX):
            reference = name[len(PRETRAINED_PREFIX):]
            candidates[name] = Candidate(name, load_backbone(reference), pooling)
            own_data[name] = LabelledData.load(data, image_processor_for(reference))
    finetuning = get_protocol("finetune")
    results = {}
    for setting in label_settings:
        subset, suffix = _label_subset(labelled.train_labels, setting, seed)
        supervised = None
        # The supervised baseline is a classifier: it stands beside the protocols scored by accuracy.
        if "supervised" in baselines and any(protocol.metric == "accuracy" for protocol in protocols):
            logger.info("training the supervised baseline (same architecture, random init) with %s labels", setting)
            supervised = finetuning.evaluate(candidates["random_init"], labelled, subset, settings["finetune"],
                                             seed)["accuracy"]
        for protocol in protocols:
            logger.info("evaluating %s with %s labels", protocol.name, setting)
            metrics = protocol.evaluate(subject, labelled, subset, settings[protocol.name], seed)
            # The supervised model of this protocol's metric: the classifier above for accuracy rows;
            # a protocol that trains the encoder for another task is its own supervised model from random init.
            own_supervised = supervised if protocol.metric == "accuracy" else None
            if protocol.trains_encoder and protocol.metric != "accuracy" and {"random_init", "supervised"} & set(baselines):
                own_supervised = protocol.evaluate(candidates["random_init"], labelled, subset, settings[protocol.name],
                                                   seed)[protocol.metric]
            compared = {}
            for name, candidate in candidates.items():
                if name == "random_init" and "random_init" not in baselines:
                    continue
                if protocol.trains_encoder and name == "random_init" and own_supervised is not None:
                    compared[name] = own_supervised  # fine-tuning from random init is the supervised model
                    continue
                compared[name] = protocol.evaluate(candidate, own_data.get(name, labelled), subset,
                                                   settings[protocol.name], seed)[protocol.metric]
            if own_supervised is not None and "supervised" in baselines:
                compared["supervised"] = own_supervised
            order = [*BASELINES, *(name for name in baselines if name.startswith(PRETRAINED_PREFIX))]
            results[protocol.name + suffix] = {
                **metrics, "metric": protocol.metric, "task_type": protocol.task_type, **common,
                "train_split": data.train_split, "label_setting": setting,
                "num_labelled": int(len(subset)), "pooling": pooling, **protocol.details(settings[protocol.name]),
                **({"baselines": {name: compared[name] for name in order if name in compared}} if compared else {}),
            }
    return results


def merge_results(output_file: str | os.PathLike | None, results: dict[str, dict]) -> None:
    """Merge `results` into a JSON file (created when missing); None does nothing."""
    if output_file is not None:
        output_file = Path(output_file)
        merged = json.loads(output_file.read_text()) if output_file.is_file() else {}
        merged.update(results)
        output_file.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


__all__ = ["BASELINES", "PRETRAINED_PREFIX", "available_protocols", "check_baselines", "evaluate_model",
           "merge_results", "random_init_like"]
