"""Push a run folder to the Hugging Face Hub (and its encoder to <repo_id>-backbone): ``hf-ssl push``.

    hf-ssl push runs/splitmask-vit-s --repo_id org/splitmask-vit-s-coco [--private] [--revision v1]

The token comes from HF_TOKEN or the login cache (`hf auth login`); there is deliberately no
--token option, so that it never lands in shell history or process lists. HF_ENDPOINT selects
the server. The folder gets its model card, modeling code and auto_map first; only its regular
files of a model repo's kinds are uploaded (never symbolic links, pickles, checkpoints/ or logs/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_ssl.command_line import CommandParser
from hf_ssl.hub import PushError, push_run_folder


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = CommandParser(prog="hf-ssl push", description=__doc__)
    parser.add_argument("run_dir", help="run folder written by trainers/pretrain.py")
    parser.add_argument("--repo_id", required=True, help="org/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repos as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created when missing)")
    parser.add_argument("--no_backbone", action="store_true", help="do not push backbone/ as <repo_id>-backbone")
    parser.add_argument("--commit_message", default=None)
    arguments = parser.parse_args(argv)
    if not Path(arguments.run_dir).is_dir():
        parser.error(f"{arguments.run_dir}: no such folder")
    return arguments


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    try:
        result = push_run_folder(
            arguments.run_dir,
            arguments.repo_id,
            private=arguments.private,
            revision=arguments.revision,
            push_backbone=not arguments.no_backbone,
            commit_message=arguments.commit_message,
        )
    except FileNotFoundError as error:  # a folder that holds no run
        print(f"error: {error}", file=sys.stderr)
        return 2
    except PushError as error:
        print(str(error), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
