"""What the quality benchmark and the sample-efficiency study share: pre-training runs in fresh
processes (as a user runs them), their evaluation with hf-ssl's protocols, the baselines measured
once per backbone and seed, and a results file that a rerun resumes from.

A run is (method, backbone, fraction of the pre-training data, seed). Every run of a study gets
the same budget (steps x batch), the recipes' own defaults for everything else, and the same
evaluation plan; the baselines (random init, raw pixels, supervised) need no pre-training and are
measured once per (backbone, seed) on the same labelled split and label subsets.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE_ROWS = ("random init", "raw pixels", "supervised")
# What every encoder of a study is measured with: {protocol: label settings}.
PLAN = {"knn": ["all"], "linear": ["all", "10%", "1%", "1-per-class"], "finetune": ["10%"]}
# Protocols on per-pixel masks, where the data has them (the scenes): {protocol: label settings}. Kept
# apart from PLAN so that adding them did not invalidate the runs measured before (a results key
# hashes its plan): dense results are stored next to a run's under their own key.
DENSE_PLAN = {"segmentation_linear": ["all", "10%"]}
DENSE_BASELINES = {"random_init": "random init", "raw_pixels": "raw pixels"}


@dataclass(frozen=True)
class Run:
    method: str
    backbone: str
    seed: int
    fraction: float = 1.0
    teacher: str | None = None  # the name of the run a distillation run distils (pre-trained first)

    @property
    def name(self) -> str:
        name = f"{self.method}-{self.backbone}-fraction{self.fraction:g}-seed{self.seed}"
        return f"{name}-from-{self.teacher}" if self.teacher else name


@dataclass(frozen=True)
class Budget:
    """What every run of a study shares."""

    max_steps: int
    total_batch_size: int
    image_size: int
    dataset_name: str
    finetune_max_steps: int | None = None  # None: the protocol's own budget (CI sizes cap it)
    eval_max_samples: int | None = None  # None: every labelled image (CI sizes cap it)

    def data(self):
        from hf_ssl.eval.data import DataSelection

        return DataSelection(self.dataset_name, max_samples=self.eval_max_samples)

    def protocol_settings(self) -> dict:
        from hf_ssl.eval.finetune import FinetuneSettings

        return {"finetune": FinetuneSettings(max_steps=self.finetune_max_steps)} if self.finetune_max_steps else {}


def evaluation_plan(plan: dict[str, list[str]]) -> list[tuple[str, str]]:
    """``[(protocol, label setting), ...]`` from ``{protocol: [settings]}``."""
    return [(protocol, setting) for protocol, settings in plan.items() for setting in settings]


def result_key(protocol: str, setting: str) -> str:
    return protocol if setting == "all" else f"{protocol}-{setting}"


class ResultsFile:
    """``{entry key: {result key: accuracy}}`` in a JSON file, written after every entry so that an
    interrupted study resumes where it stopped. Entries are keyed by the run (or the baselines of a
    backbone and seed) and by the budget and plan they were measured with, so studies that share a
    run (the quality benchmark's 100 % runs are the sample-efficiency study's) measure it once."""

    def __init__(self, path: Path, budget: Budget, plan: list[tuple[str, str]]):
        self.path = path
        self.signature = hashlib.sha256(json.dumps([asdict(budget), plan], sort_keys=True).encode()).hexdigest()[:12]
        self.entries = json.loads(path.read_text()) if path.is_file() else {}

    def key(self, name: str) -> str:
        return f"{name}|{self.signature}"

    def dense_key(self, name: str) -> str:
        """Where `name`'s results of `DENSE_PLAN` are kept (their own signature: the dense plan's)."""
        signature = hashlib.sha256(json.dumps(DENSE_PLAN, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.key(name)}|dense-{signature}"

    def get(self, name: str, dense: bool = False) -> dict | None:
        return self.entries.get(self.dense_key(name) if dense else self.key(name))

    def put(self, name: str, values: dict, dense: bool = False) -> None:
        self.entries[self.dense_key(name) if dense else self.key(name)] = values
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        temporary.replace(self.path)


def training_size(dataset_name: str) -> int:
    from hf_ssl.data import load_image_dataset

    return len(load_image_dataset(dataset_name, split="train"))


def pretrain(run: Run, budget: Budget, runs_dir: Path, number_of_rows: int) -> Path:
    """One pre-training run in a fresh process; returns its run folder."""
    rows = max(budget.total_batch_size, math.ceil(run.fraction * number_of_rows))
    run_dir = runs_dir / run.name
    arguments_file = run_dir / "training_args.json"
    if (run_dir / "model.safetensors").is_file() and arguments_file.is_file():
        trained = json.loads(arguments_file.read_text())
        if (trained.get("max_steps"), trained.get("total_batch_size"), trained.get("image_size"), trained.get("max_train_samples"),
                trained.get("seed")) == (budget.max_steps, budget.total_batch_size, budget.image_size, rows, run.seed):
            return run_dir  # measured before with this budget: the results were lost, not the weights
    command = [
        sys.executable, "-m", "hf_ssl.cli.pretrain", "--method", run.method, "--model", run.backbone,
        "--image_size", str(budget.image_size), "--dataset_name", budget.dataset_name,
        "--max_train_samples", str(rows), "--max_steps", str(budget.max_steps),
        "--total_batch_size", str(budget.total_batch_size), "--seed", str(run.seed), "--save_steps", str(budget.max_steps),
        "--report_protocols", "none", "--report_to", "none", "--output_dir", str(run_dir), "--overwrite_output_dir",
        *(["--teacher", str(runs_dir / run.teacher)] if run.teacher else []),
    ]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    print(f"pre-trained {run.name} on {rows} rows in {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


def _accuracies(results: dict, with_baselines: bool) -> dict:
    """``{result key: accuracy}`` (and ``{baseline: {result key: accuracy}}``) from evaluate_model's output."""
    own = {key: result["accuracy"] for key, result in results.items() if "accuracy" in result}
    if not with_baselines:
        return own
    baselines: dict[str, dict] = {}
    for key, result in results.items():
        for name, value in result.get("baselines", {}).items():
            baselines.setdefault(name, {})[key] = value
    return {"own": own, "baselines": baselines}


def evaluate(run_dir: Path, plan: list[tuple[str, str]], budget: Budget, seed: int, extra_protocols=()) -> dict:
    """The run's encoder through every (protocol, label setting) of `plan` (no baselines)."""
    from hf_ssl.eval import evaluate_model

    results = {}
    for setting in dict.fromkeys(setting for _, setting in plan):
        protocols = [protocol for protocol, wanted in plan if wanted == setting]
        results.update(evaluate_model(run_dir, protocols, data=budget.data(), label_settings=(setting,),
                                      settings=budget.protocol_settings(), seed=seed))
    if extra_protocols:
        results.update(evaluate_model(run_dir, extra_protocols, data=budget.data(), seed=seed))
    return _accuracies(results, with_baselines=False)


def has_masks(budget: Budget) -> bool:
    """Whether the study's labelled data has per-pixel masks for `DENSE_PLAN`."""
    from hf_ssl.eval.data import load_labelled_split

    return budget.data().mask_column in load_labelled_split(budget.dataset_name, "test", max_samples=1).column_names


def evaluate_dense(run_dir: Path, budget: Budget, seed: int, with_baselines: bool) -> dict:
    """`DENSE_PLAN` on the run's encoder: ``{result key: mean IoU}``, and with `with_baselines`
    ``{"own": {...}, "random init": {...}, "raw pixels": {...}}`` (the same protocol on the untrained
    encoder and on each cell's pixels)."""
    from hf_ssl.eval import evaluate_model

    results = {}
    for setting in dict.fromkeys(setting for settings in DENSE_PLAN.values() for setting in settings):
        protocols = [protocol for protocol, settings in DENSE_PLAN.items() if setting in settings]
        results.update(evaluate_model(run_dir, protocols, data=budget.data(), label_settings=(setting,), seed=seed,
                                      baselines=tuple(DENSE_BASELINES) if with_baselines else ()))
    own = {key: result[result["metric"]] for key, result in results.items()}
    if not with_baselines:
        return own
    return {"own": own, **{row: {key: result["baselines"][name] for key, result in results.items()}
                           for name, row in DENSE_BASELINES.items()}}


def evaluate_baselines(run_dir: Path, plan: list[tuple[str, str]], budget: Budget, seed: int) -> dict[str, dict]:
    """``{"random init": {...}, "raw pixels": {...}, "supervised": {...}}`` for the backbone of
    `run_dir`: the frozen protocols on the untrained encoder and on the pixels, and the supervised
    model (fine-tuned from random init) with each label setting of the plan."""
    from hf_ssl.eval import evaluate_model

    settings = list(dict.fromkeys(setting for _, setting in plan))
    frozen = [protocol for protocol in dict.fromkeys(protocol for protocol, _ in plan) if protocol != "finetune"]
    results = evaluate_model(run_dir, frozen, data=budget.data(), label_settings=settings,
                             random_init=True, baselines=("raw_pixels", "supervised"), settings=budget.protocol_settings(),
                             seed=seed)
    measured = _accuracies(results, with_baselines=True)
    wanted = {result_key(protocol, setting) for protocol, setting in plan}
    rows = {"random init": {key: value for key, value in measured["own"].items() if key in wanted},
            "raw pixels": {key: value for key, value in measured["baselines"].get("raw_pixels", {}).items() if key in wanted},
            "supervised": {}}
    finetuned = {setting for protocol, setting in plan if protocol == "finetune"}
    for key, value in measured["baselines"].get("supervised", {}).items():
        setting = key.split("-", 1)[1] if "-" in key else "all"
        if setting in finetuned:
            # fine-tuning from random init IS the supervised model; the pixels' counterpart is the linear head alone
            rows["random init"][result_key("finetune", setting)] = value
            linear = rows["raw pixels"].get(result_key("linear", setting))
            if linear is not None:
                rows["raw pixels"][result_key("finetune", setting)] = linear
        # every label setting: with all labels the supervised model is the reference a protocol is judged by
        rows["supervised"][result_key("finetune", setting)] = value
    return rows


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": len(values)}


def gather(entries: dict[str, dict]) -> dict[str, dict]:
    """``{row: {result key: summary over seeds}}`` from ``{row|seed: {result key: accuracy}}`` entries."""
    collected: dict[str, dict[str, list[float]]] = {}
    for key, values in entries.items():
        row = key.rsplit("|seed", 1)[0]
        for result, value in values.items():
            collected.setdefault(row, {}).setdefault(result, []).append(value)
    return {row: {result: summarise(values) for result, values in columns.items()} for row, columns in collected.items()}


def run_study(runs: list[Run], budget: Budget, plan: list[tuple[str, str]], runs_dir: Path, row_name,
              extra_protocols=lambda method: (), dense: bool = False) -> dict[str, dict]:
    """Pre-train and evaluate every run not yet in ``<runs_dir>/results.json``, with the baselines of
    each (backbone, seed) next to the first run that has them; returns `gather`'s rows.

    Args:
        row_name: ``Run -> str``, the table row a run belongs to (its seeds are averaged).
        extra_protocols: ``method -> protocols`` evaluated with every label (e.g. zero-shot).
        dense: also measure `DENSE_PLAN` (and its baselines) where the data has masks.
    """
    results = ResultsFile(runs_dir / "results.json", budget, plan)
    number_of_rows = training_size(budget.dataset_name)
    dense = dense and has_masks(budget)
    by_row: dict[str, dict] = {}
    for run in runs:
        baseline_name = f"baselines|{run.backbone}|seed{run.seed}"
        missing = [name for name in (run.name, baseline_name) if results.get(name) is None
                   or (dense and results.get(name, dense=True) is None)]
        if missing:
            run_dir = pretrain(run, budget, runs_dir, number_of_rows)
            started = time.perf_counter()
            if results.get(run.name) is None:
                results.put(run.name, evaluate(run_dir, plan, budget, run.seed, extra_protocols(run.method)))
            if results.get(baseline_name) is None:
                results.put(baseline_name, evaluate_baselines(run_dir, plan, budget, run.seed))
            if dense and baseline_name in missing and results.get(baseline_name, dense=True) is None:
                measured = evaluate_dense(run_dir, budget, run.seed, with_baselines=True)
                results.put(run.name, measured.pop("own"), dense=True)
                results.put(baseline_name, measured, dense=True)
            elif dense and results.get(run.name, dense=True) is None:
                results.put(run.name, evaluate_dense(run_dir, budget, run.seed, with_baselines=False), dense=True)
            print(f"evaluated {run.name} in {time.perf_counter() - started:.0f} s", flush=True)
        by_row[f"{row_name(run)}|seed{run.seed}"] = {**results.get(run.name), **(results.get(run.name, dense=True) or {})}
        dense_baselines = results.get(baseline_name, dense=True) or {}
        for row, values in results.get(baseline_name).items():
            by_row[f"{row} ({run.backbone})|seed{run.seed}"] = {**values, **dense_baselines.get(row, {})}
    return gather(by_row)


def configuration(arguments) -> dict:
    """The study's arguments, the commit measured and the host (CPU model, cores), for the results file."""
    import os
    import platform

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    return {**{key: (str(value) if isinstance(value, Path) else value) for key, value in vars(arguments).items()},
            "commit": commit or None, "host": f"{cpu}, {len(os.sched_getaffinity(0))} cores"}


__all__ = ["BASELINE_ROWS", "PLAN", "Budget", "ResultsFile", "Run", "configuration", "evaluation_plan", "result_key",
           "run_study"]
