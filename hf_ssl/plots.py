"""Training-loss plot for model cards: ``training_log.jsonl`` -> ``loss_curve.png``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_training_log(path: str | os.PathLike, torn_lines: list[int] | None = None) -> list[dict]:
    """The JSON objects of a ``training_log.jsonl`` (one per line; blank lines skipped).

    A line that does not parse, a record cut off when a run stopped mid-write (killed, or out of
    disk space), is skipped; its 1-based number is appended to `torn_lines` when given.
    """
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif torn_lines is not None:
                torn_lines.append(number)
    return records


def save_loss_curve(training_log: str | os.PathLike, path: str | os.PathLike, title: str | None = None) -> Path:
    """Plot loss against step (and the learning rate on a second axis when logged) as a PNG.

    Args:
        training_log: a ``training_log.jsonl`` with ``{"step", "loss", ...}`` records.
        path: output PNG.
        title: figure title (default: "Training loss").

    Raises:
        ValueError: the log has no record with both "step" and "loss".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [record for record in read_training_log(training_log) if "step" in record and "loss" in record]
    if not records:
        raise ValueError(f"{training_log} has no records with 'step' and 'loss'")
    steps = [record["step"] for record in records]
    figure, loss_axis = plt.subplots(figsize=(6, 3.5))
    loss_axis.plot(steps, [record["loss"] for record in records], color="tab:blue", label="loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    if all("learning_rate" in record for record in records):
        rate_axis = loss_axis.twinx()
        rate_axis.plot(steps, [record["learning_rate"] for record in records], color="tab:orange", alpha=0.6)
        rate_axis.set_ylabel("learning rate", color="tab:orange")
    loss_axis.set_title(title or "Training loss")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
