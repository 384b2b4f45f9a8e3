"""Derived columns (ratios, utilisation, loader workers) and the results files: ``<host>.json`` and ``<host>.md``."""

from __future__ import annotations

import json
from pathlib import Path

from data_rates import workers_needed

REFERENCE_LEVER = "baseline"

_ALLOCATORS = {
    True: "freed memory kept for the next step (every row), as the hf-ssl trainer runs on CPU",
    False: "the platform's default",
}


def utilisation_reference(matmul: dict, bf16_native: bool) -> dict:
    """The matmul rate utilisation is a fraction of: bf16 where the host computes it natively, else
    fp32; the better of the start and end measurements (the least disturbed)."""
    dtype = "bf16" if bf16_native else "fp32"
    return {"dtype": dtype, "gflops": max(matmul["start"][dtype], matmul["end"][dtype])}


def _group_key(row: dict) -> tuple:
    return row["method"], row["size"], row["precision"]


def add_derived_columns(rows: list[dict], peak_gflops: float, worker_rates: dict[tuple[str, str], dict]) -> None:
    """Per measured row: achieved GFLOP/s and utilisation, speed and memory next to the group's first
    reference (implementation rows) or to the hf-ssl baseline (lever rows), loader workers needed.

    Args:
        worker_rates: ``{(method, size): {"decoder": ..., "best_per_second": ...}}`` the fastest decoder's
            per-worker rate of the case's transform.
    """
    measured = [row for row in rows if row.get("status") == "measured"]
    groups: dict[tuple, list[dict]] = {}
    for row in measured:
        groups.setdefault(_group_key(row), []).append(row)
    for group in groups.values():
        baselines = [row for row in group if row["lever"] == REFERENCE_LEVER]
        reference = next((row for row in baselines if row["implementation"] != "hf-ssl"), None)
        hf_ssl = next((row for row in baselines if row["implementation"] == "hf-ssl"), None)
        for row in group:
            compared = reference if row["lever"] == REFERENCE_LEVER else hf_ssl
            row["compared_with"] = None if compared is None else f"{compared['implementation']} [{compared['lever']}]"
            if compared is not None:
                row["speed_ratio"] = row["images_per_second_best"] / compared["images_per_second_best"]
                row["median_speed_ratio"] = row["images_per_second_median"] / compared["images_per_second_median"]
                if row.get("peak_memory_mib") and compared.get("peak_memory_mib"):
                    row["memory_ratio"] = row["peak_memory_mib"] / compared["peak_memory_mib"]
            if row.get("flops_per_step"):
                achieved = row["flops_per_step"] / row["seconds_per_step_best"] / 1e9
                row["achieved_gflops"] = achieved
                row["utilisation"] = achieved / peak_gflops
            rate = worker_rates.get((row["method"], row["size"]))
            if rate is not None:
                row["loader_workers_needed"] = workers_needed(row["images_per_second_best"], rate["best_per_second"])
                row["loader_worker_decoder"] = rate["decoder"]


def fastest_worker_rates(per_worker: dict[str, dict], case_keys: dict[str, tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """``{(method, size): the fastest decoder's per-worker result}`` from `data_rates.per_worker_rates`."""
    fastest: dict[tuple[str, str], dict] = {}
    for result in per_worker.values():
        if "best_per_second" not in result:
            continue
        key = case_keys[result["case"]]
        if key not in fastest or result["best_per_second"] > fastest[key]["best_per_second"]:
            fastest[key] = result
    return fastest


def _number(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def markdown(results: dict) -> str:
    """The tables the README quotes, with the run's conditions above them."""
    host, settings, matmul = results["host"], results["settings"], results["matmul_gflops"]
    machine = host.get("gpu_name") or f"{host['cpu_model']} ({host['cpu_cores_visible']} cores)"
    lines = [f"# hf-ssl benchmarks: {machine}", ""]
    if not results["valid"]:
        lines += [f"**NOT VALID: {results['invalid_reason']}.** Shape of the results only; do not quote.", ""]
    reference = matmul["utilisation_reference"]
    gpu = f", GPU {host['gpu_name']}" if host.get("gpu_name") else ""
    lines += [
        f"- Command: `{' '.join(results['command'])}`, started {results['started_at']}, {results['wall_seconds']:.0f} s.",
        (f"- Host: {host['cpu_model']}, bf16 CPU flags {', '.join(host['cpu_bf16_flags']) or 'none'}, "
         f"{host['torch_threads']} threads{gpu}; torch {host['torch']}, transformers {host['transformers']}, "
         f"lightly {host.get('lightly') or 'not installed'}."),
        (f"- Load average (1/5/15 min): {results['load']['start']['load_average']} at start, "
         f"{results['load']['end']['load_average']} at end."),
        (f"- Matmul GFLOP/s: fp32 {matmul['start']['fp32']:.3g} / bf16 {matmul['start']['bf16']:.3g} at start, "
         f"fp32 {matmul['end']['fp32']:.3g} / bf16 {matmul['end']['bf16']:.3g} at end; utilisation is a fraction of "
         f"{reference['dtype']} {reference['gflops']:.3g} GFLOP/s."),
        (f"- Precisions: {', '.join(settings['precisions'])} (bf16 {'native' if host['bf16_native'] else 'not native'} "
         f"here); batch {settings['batch_size']}; {settings['warmup']} warm-up steps, then {settings['rounds']} "
         f"interleaved rounds of {settings['steps']} steps per row; memory: {settings['memory']}; host allocator: "
         f"{_ALLOCATORS[bool(settings.get('cpu_allocator_cached'))]}."),
        "",
        "## Implementations",
        "",
        ("| method | backbone | px | precision | implementation | img/s best | img/s median | x reference "
         "| peak MiB | x reference | GFLOP/step | utilisation | loader workers |"),
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [row for row in results["rows"] if row.get("status") == "measured"]
    for row in rows:
        if row["lever"] != REFERENCE_LEVER:
            continue
        flops = row.get("flops_per_step")
        lines.append(
            f"| {row['method']} | {row['model']} | {row['image_size']} | {row['precision']} | {row['implementation']} "
            f"| {_number(row['images_per_second_best'])} | {_number(row['images_per_second_median'])} "
            f"| {_ratio(row.get('speed_ratio'))} | {_number(row.get('peak_memory_mib'), 0)} | {_ratio(row.get('memory_ratio'))} "
            f"| {_number(flops / 1e9 if flops else None, 1)} | {_percent(row.get('utilisation'))} "
            f"| {row.get('loader_workers_needed', '–')} |"
        )
    lever_rows = [row for row in rows if row["lever"] != REFERENCE_LEVER]
    if lever_rows:
        lines += [
            "",
            "## Levers (hf-ssl, one at a time against its baseline row)",
            "",
            ("| method | backbone | precision | lever | img/s best | img/s median | x baseline | peak MiB | x baseline "
             "| first step s |"),
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in lever_rows:
            lines.append(
                f"| {row['method']} | {row['model']} | {row['precision']} | {row['lever']} "
                f"| {_number(row['images_per_second_best'])} | {_number(row['images_per_second_median'])} "
                f"| {_ratio(row.get('speed_ratio'))} | {_number(row.get('peak_memory_mib'), 0)} "
                f"| {_ratio(row.get('memory_ratio'))} | {_number(row.get('first_step_seconds'), 1)} |"
            )
    data = results.get("data")
    if data:
        targets = data["target_images_per_second"]
        lines += [
            "",
            (f"## Data: decode + augment per DataLoader worker ({data['jpeg']['count']} JPEGs of "
             f"{data['jpeg']['size']} px, {data['jpeg']['mean_kilobytes']:.1f} kB)"),
            "",
            "| transform (method, size) | decoder | img/s per worker best | median | "
            + " | ".join(f"workers for {target:g} img/s" for target in targets) + " |",
            "|---|---|---:|---:|" + "---:|" * len(targets),
        ]
        for result in data["per_worker"].values():
            if "best_per_second" not in result:
                lines.append(f"| {result['case']} | {result['decoder']} | not measured: {result['skipped']} | |"
                             + " |" * len(targets))
                continue
            needed = " | ".join(str(workers_needed(target, result["best_per_second"])) for target in targets)
            lines.append(f"| {result['case']} | {result['decoder']} | {_number(result['best_per_second'], 1)} "
                         f"| {_number(result['median_per_second'], 1)} | {needed} |")
        stack = data.get("loader_stack")
        if stack:
            lines += ["", (f"Loader stack (datasets webdataset stream -> hf-ssl row stream -> {stack['num_workers']} "
                           f"DataLoader workers, light transform, batch {stack['batch_size']}): "
                           f"{stack['images_per_second']:.1f} img/s, {stack['images_per_second_per_worker']:.1f} per worker.")]
    not_measured = [row for row in results["rows"] if row.get("status") in ("skipped", "failed")]
    if not_measured:
        lines += ["", "## Not measured", ""]
        for row in not_measured:
            lines.append(f"- {row['method']} {row['size']} {row['precision']} {row['implementation']} "
                         f"[{row['lever']}]: {row['status']}: {row['reason']}")
    lines += ["", "Columns: see the docstring of `benchmarks/run.py`.", ""]
    return "\n".join(lines)


def write_results(results: dict, output_directory: Path, name: str) -> tuple[Path, Path]:
    """``<output_directory>/<name>.json`` and ``<name>.md``."""
    output_directory.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output_directory / f"{name}.json", output_directory / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    markdown_path.write_text(markdown(results))
    return json_path, markdown_path




def write_study(output_dir: Path, name: str, report: dict, markdown_text: str, plot) -> Path:
    """A study's results files: ``<output_dir>/<name>.json``, ``.md`` and ``.png`` (the matplotlib
    figure ``plot(report)`` returns); prints the Markdown and returns the stem."""
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / name
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown_text)
    figure = plot(report)
    figure.tight_layout()
    figure.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(figure)
    print(markdown_text)
    return stem


__all__ = ["add_derived_columns", "fastest_worker_rates", "markdown", "utilisation_reference", "write_results",
           "write_study"]


def check_family_entries(parser, entries) -> None:
    """``--models family:path`` entries of the attention studies: `parser.error` on one without a family."""
    for entry in entries:
        if ":" not in entry:
            parser.error(f"--models entries are family:path, got {entry!r}")
