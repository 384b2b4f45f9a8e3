"""``hf-ssl <command> ...``: the console script installed with the package.

    hf-ssl pretrain --method splitmask --model vit-small --dataset_name my-org/my-images ...
    hf-ssl evaluate --model runs/splitmask-vit-small --protocol knn linear
    hf-ssl push runs/splitmask-vit-small --repo_id org/splitmask-vit-s
    hf-ssl analyze attention --model runs/dino-vit-small --images a.jpg --out maps/

Multi-process: ``accelerate launch -m hf_ssl.cli.pretrain ...``.

This module lives outside the ``hf_ssl`` package on purpose: importing anything inside it runs
``hf_ssl/__init__``, which registers every model with the transformers Auto classes and so
imports torch, transformers and torchvision (about 5 s of CPU). ``hf-ssl --help``,
``hf-ssl --version`` and a mistyped command answer without that; a command imports its module
only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

COMMANDS = {
    "pretrain": ("hf_ssl.cli.pretrain", "pre-train a model (accelerate-ready)"),
    "evaluate": ("hf_ssl.cli.evaluate", "kNN / linear probe / fine-tuning (and zero-shot / retrieval for image-text models), with baselines"),
    "finetune": ("hf_ssl.cli.finetune", "fine-tune an encoder into a segmentation model that pipeline() and AutoModel load"),
    "push": ("hf_ssl.cli.push", "upload a run folder to the Hugging Face Hub"),
    "analyze": ("hf_ssl.cli.analyze", "attention maps, attention metrics and CKA of a ViT"),
}


def usage() -> str:
    lines = ["usage: hf-ssl <command> [--help] ...", "       hf-ssl --version", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def installed_version() -> str:
    """The installed distribution's version (read from its metadata, without importing hf_ssl)."""
    try:
        return version("hf-ssl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"hf-ssl {installed_version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; the commands are {', '.join(COMMANDS)} (hf-ssl --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
