"""`python trainers/finetune.py ...` is `hf-ssl finetune ...` (hf_ssl/cli/finetune.py); kept for checkouts of the repository."""

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path; a sibling script named like a library
# (trainers/evaluate.py vs the `evaluate` package) would then shadow that library.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from hf_ssl.cli.finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
