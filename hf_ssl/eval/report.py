"""What a person reads after an evaluation: one table (each protocol next to its baselines) and a
verdict line, printed at the end of pre-training and by ``hf-ssl evaluate``."""

from __future__ import annotations

import os
from pathlib import Path

from .data import DataSelection
from .protocol import get_protocol
from .runner import BASELINES, PRETRAINED_PREFIX, evaluate_model, merge_results
from .zero_shot import is_image_text_folder

BASELINE_TITLES = {"random_init": "random init", "raw_pixels": "raw pixels", "supervised": "supervised"}
# Baselines a label-free method is expected to beat; supervised is an upper reference.
BASELINES_TO_BEAT = ("random_init", "raw_pixels")
# The labels each protocol of the end-of-training report learns from: the frozen protocols every
# label, fine-tuning a tenth of them (where pre-training is meant to pay off: few labels).
REPORT_LABELS = {"knn": "all", "linear": "all", "finetune": "10%"}


def baseline_title(name: str) -> str:
    """How the report names a baseline ("random init"; a checkpoint by its reference)."""
    if name.startswith(PRETRAINED_PREFIX):
        return name[len(PRETRAINED_PREFIX):]
    return BASELINE_TITLES.get(name, name)


def _row_title(key: str, result: dict) -> str:
    protocol = get_protocol(key.split("-")[0])
    if protocol.name == "knn":
        return f"{protocol.title} (k={result.get('k', 20)})"
    if protocol.name == "linear" and "inverse_regularisation" in result:
        return f"{protocol.title} (C={result['inverse_regularisation']:g})"
    if protocol.name == "finetune" and "steps" in result:
        return f"{protocol.title} ({result['steps']} steps)"
    if protocol.metric != "accuracy":
        return f"{protocol.title} ({protocol.metric.replace('_', ' ').replace('iou', 'IoU')})"
    return protocol.title


def _main_metric(result: dict) -> float:
    """The result's headline number: its protocol's `metric` (accuracy, mean IoU), else its first float."""
    key = result.get("metric", "accuracy")
    return result[key] if key in result else next(value for value in result.values() if isinstance(value, float))


def format_report(results: dict[str, dict]) -> str:
    """The table of `results` (``evaluate_model``'s output): one row per protocol and label setting,
    the encoder and each baseline in columns, then the verdict."""
    if not results:
        return "No results."
    first = next(iter(results.values()))
    baselines = []
    for result in results.values():
        baselines += [name for name in result.get("baselines", {}) if name not in baselines]
    order = [*(name for name in BASELINES if name in baselines), *(name for name in baselines if name not in BASELINES)]
    header = ["protocol", "labels", "pre-trained", *(baseline_title(name) for name in order)]
    rows = []
    for key, result in results.items():
        values = [f"{_main_metric(result):.4f}"]
        values += [f"{result['baselines'][name]:.4f}" if name in result.get("baselines", {}) else "-" for name in order]
        rows.append([_row_title(key, result), str(result.get("label_setting", "all")), *values])
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    scored_by = "top-1 accuracy" if all(result.get("metric", "accuracy") == "accuracy" for result in results.values()) \
        else "top-1 accuracy, or the metric a row names"
    lines = [f"{first.get('dataset', 'dataset')}, {first.get('split', 'test')} split, {scored_by} "
             "(supervised: the same architecture trained from random init with the row's labels):"]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                                      for column, (cell, width) in enumerate(zip(row, widths))))
    lines.append(verdict(results))
    return "\n".join(lines)


def verdict(results: dict[str, dict]) -> str:
    """One line: on which protocols the encoder beats the label-free baselines and every named
    checkpoint, and where it does not (with the numbers)."""
    lost, protocols = [], []
    for key, result in results.items():
        name = f"{get_protocol(key.split('-')[0]).title}" + (f" ({result['label_setting']} labels)"
                                                            if result.get("label_setting", "all") not in ("all", "none") else "")
        protocols.append(name)
        value = _main_metric(result)
        for baseline, other in result.get("baselines", {}).items():
            if (baseline in BASELINES_TO_BEAT or baseline.startswith(PRETRAINED_PREFIX)) and value <= other:
                lost.append(f"{baseline_title(baseline)} on {name} ({value:.4f} vs {other:.4f})")
    compared = sorted({baseline_title(baseline) for result in results.values() for baseline in result.get("baselines", {})
                       if baseline in BASELINES_TO_BEAT or baseline.startswith(PRETRAINED_PREFIX)})
    if not compared:
        return ("No verdict: none of the baselines a label-free encoder must beat (random init, raw pixels, a "
                "pre-trained checkpoint) was measured; supervised is a reference, not a bar.")
    if lost:
        return "Verdict: the pre-trained encoder does NOT beat " + "; ".join(lost) + "."
    return f"Verdict: the pre-trained encoder beats {', '.join(compared)} on every protocol ({', '.join(protocols)})."


def evaluate_run_after_training(run_dir: str | os.PathLike, protocols=tuple(REPORT_LABELS), dataset_name: str | None = None,
                                seed: int = 0, baselines=BASELINES) -> str:
    """The end-of-pre-training report on labelled data: `protocols` with the labels of `REPORT_LABELS`
    (k-NN and the validated linear probe with every label, fine-tuning with 10 %) next to `baselines`
    (random init, raw pixels and supervised by default), plus zero-shot for an image-text model;
    merged into ``run_dir/eval_results.json``. Returns the text to print."""
    run_dir = Path(run_dir)
    data = DataSelection(dataset_name)
    results: dict[str, dict] = {}
    for setting in dict.fromkeys(REPORT_LABELS[name] for name in protocols):
        chosen = [name for name in protocols if REPORT_LABELS[name] == setting]
        results.update(evaluate_model(run_dir, chosen, data=data, label_settings=(setting,), baselines=tuple(baselines),
                                      feature_cache_dir=run_dir / "eval_cache", seed=seed))
    if is_image_text_folder(run_dir):  # an image-text model also classifies from label names
        results.update(evaluate_model(run_dir, ("zero_shot",), data=data, baselines=tuple(name for name in baselines if name == "random_init"), seed=seed))
    merge_results(run_dir / "eval_results.json", results)
    return format_report(results)


__all__ = ["REPORT_LABELS", "evaluate_run_after_training", "format_report", "verdict"]
