"""Attention maps, per-head attention statistics and CKA of a ViT: ``python trainers/analyze.py {attention,metrics,cka} ...``.

A thin wrapper of `hf_ssl.cli.analyze` (see ``python trainers/analyze.py --help``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path; a sibling script named like a library
# (trainers/evaluate.py vs the `evaluate` package) would then shadow that library. Entry points
# never import each other, so the folder is dropped.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from hf_ssl.cli.analyze import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
