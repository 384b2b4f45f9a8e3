"""Push a run folder (and its exported backbone) to the Hugging Face Hub.

`push_run_folder(run_dir, repo_id)` makes the folder Hub-ready (model card, modeling code and
``auto_map`` for ``trust_remote_code``), then uploads it with `HfApi.create_repo` /
`HfApi.create_commit`; ``run_dir/backbone`` goes to ``<repo_id>-backbone``. What is uploaded is
an allow-list (`files_to_push`): regular files inside the folder whose kind a model repo holds.
Symbolic links are never followed (a link to /etc/passwd or to the user's Hub token would upload
its target), pickle files never sent, training state (checkpoints/, logs/) and feature caches
never uploaded.

Tokens: the `token` argument, else ``HF_TOKEN`` or the login cache, resolved by huggingface_hub.
No token is ever written to a file or a log by hf-ssl. A failed upload leaves the local folder as
it was and raises `PushError` with the command that retries it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import stat
from pathlib import Path

from .cards import build_segmentation_card, write_model_card
from hf_ssl.safe_loading import check_safetensors_only, list_checkpoint_files
from hf_ssl.remote_code import add_remote_code

logger = logging.getLogger(__name__)

# The kinds of file a run folder holds for the Hub: weights, configs, logs, card, figures, remote
# code and tokenizer files (vocab.txt, merges.txt, spiece.model, chat templates).
PUSHED_SUFFIXES = (".safetensors", ".json", ".jsonl", ".md", ".png", ".py", ".txt", ".model", ".jinja")
# Training state, tracker logs and feature caches; backbone/ is pushed on its own, to <repo_id>-backbone.
NEVER_PUSHED_FOLDERS = ("checkpoints", "logs", "eval_cache", "backbone")


class PushError(RuntimeError):
    """An upload failed; the message says what went wrong and how to retry."""


def _retry_command(run_dir: Path, repo_id: str, private: bool, revision: str | None, push_backbone: bool) -> str:
    command = ["hf-ssl", "push", str(run_dir), "--repo_id", repo_id]
    if private:
        command.append("--private")
    if revision:
        command += ["--revision", revision]
    if not push_backbone:
        command.append("--no_backbone")
    return shlex.join(command)


def files_to_push(folder: str | os.PathLike, skipped_folders: tuple[str, ...] = NEVER_PUSHED_FOLDERS) -> tuple[list[str], list[str]]:
    """What an upload of `folder` sends: ``(relative paths, ["<path> (<why not>)" for the rest])``.

    A file is sent when it is a regular file (not a symbolic link, device or pipe) reached without
    following any link, outside `skipped_folders` (top level) and hidden entries, with one of
    `PUSHED_SUFFIXES`; anything else (pickle files among them) is left out.
    """
    folder = Path(folder)
    sent, left_out = [], []
    for root, directories, names in os.walk(folder):  # followlinks=False: a linked folder is never entered
        relative_root = Path(root).relative_to(folder)
        for directory in list(directories):
            if directory.startswith(".") or (relative_root == Path(".") and directory in skipped_folders):
                directories.remove(directory)
            elif os.path.islink(Path(root, directory)):
                directories.remove(directory)
                left_out.append(f"{(relative_root / directory).as_posix()}/ (a symbolic link)")
        for name in sorted(names):
            relative = (relative_root / name).as_posix()
            mode = os.lstat(Path(root, name)).st_mode
            if name.startswith("."):
                continue
            if stat.S_ISLNK(mode):
                left_out.append(f"{relative} (a symbolic link)")
            elif not stat.S_ISREG(mode):
                left_out.append(f"{relative} (not a regular file)")
            elif not name.endswith(PUSHED_SUFFIXES):
                left_out.append(f"{relative} (not a kind of file a model repo holds: {', '.join(PUSHED_SUFFIXES)})")
            else:
                sent.append(relative)
    return sorted(sent), sorted(left_out)


def _open_regular_file(path: Path):
    """`path` opened for reading, refusing a symbolic link swapped in since it was listed."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OSError(f"{path} is no longer a regular file")
    return os.fdopen(descriptor, "rb")


def _upload(api, folder: Path, repo_id: str, private: bool, revision: str | None, token, commit_message: str,
            skipped_folders: tuple[str, ...]) -> str:
    from huggingface_hub import CommitOperationAdd

    sent, left_out = files_to_push(folder, skipped_folders)
    if left_out:
        logger.warning("Not uploaded from %s: %s", folder, "; ".join(left_out))
    api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
    with contextlib.ExitStack() as files:
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=files.enter_context(_open_regular_file(folder / path)))
                      for path in sent]
        commit = api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message,
                                   revision=revision, token=token)
    return commit.oid


def prepare_run_folder(run_dir: str | os.PathLike, repo_id: str | None = None) -> dict:
    """Make a run folder (or an ``hf-ssl finetune`` output folder) Hub-ready in place: safetensors
    check, remote code + auto_map, model cards."""
    from hf_ssl.eval.segmentation_model import FINETUNE_ARGUMENTS_FILE

    run_dir = Path(run_dir)
    check_safetensors_only(list_checkpoint_files(run_dir), str(run_dir))
    auto_map = add_remote_code(run_dir)
    if (run_dir / FINETUNE_ARGUMENTS_FILE).is_file():  # a model written by hf-ssl finetune
        build_segmentation_card(run_dir, repo_id=repo_id).save(run_dir / "README.md")
    else:
        write_model_card(run_dir, repo_id=repo_id)
    return auto_map


def push_run_folder(
    run_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    push_backbone: bool = True,
    commit_message: str | None = None,
) -> dict:
    """Upload a run folder to ``repo_id`` and its ``backbone/`` to ``<repo_id>-backbone``.

    Args:
        run_dir: the run folder (config.json, model.safetensors, ...).
        repo_id: ``"org/name"`` on the Hub (``HF_ENDPOINT`` picks the server).
        private: create the repos as private.
        revision: branch to push to (created from main when missing); None = main.
        token: a Hub token; None = ``HF_TOKEN`` or the login cache. Never stored.
        push_backbone: also push ``run_dir/backbone`` (when it exists).
        commit_message: defaults to "Upload <method> run <name> with hf-ssl".

    Returns:
        ``{"repo_id", "repo_url", "commit", "backbone_repo_id"?, "backbone_repo_url"?, "backbone_commit"?}``.

    Raises:
        PushError: the upload failed (network, credentials, server); the local folder is intact
            and the message gives the command to retry.
    """
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    prepare_run_folder(run_dir, repo_id)
    api = HfApi()
    message = commit_message or f"Upload {run_dir.resolve().name} with hf-ssl"
    backbone_dir = run_dir / "backbone"
    pushing_backbone = push_backbone and (backbone_dir / "config.json").is_file()
    result: dict = {"repo_id": repo_id, "repo_url": f"{api.endpoint}/{repo_id}"}
    try:
        result["commit"] = _upload(api, run_dir, repo_id, private, revision, token, message, NEVER_PUSHED_FOLDERS)
        if pushing_backbone:
            backbone_repo_id = f"{repo_id}-backbone"
            check_safetensors_only(list_checkpoint_files(backbone_dir), str(backbone_dir))
            result["backbone_repo_id"] = backbone_repo_id
            result["backbone_repo_url"] = f"{api.endpoint}/{backbone_repo_id}"
            result["backbone_commit"] = _upload(
                api, backbone_dir, backbone_repo_id, private, revision, token, message + " (encoder)",
                tuple(name for name in NEVER_PUSHED_FOLDERS if name != "backbone"),
            )
    except Exception as error:  # network, HTTP and credential errors all end here
        retry = _retry_command(run_dir, repo_id, private, revision, push_backbone)
        raise PushError(
            f"Uploading {run_dir} to {api.endpoint}/{repo_id} failed ({type(error).__name__}: "
            f"{_without_secrets(str(error), token)}). Nothing in the local folder was removed (it now also carries "
            "the remote code and model card it was uploading); to retry, check the network "
            f"and your token (`hf auth login` or HF_TOKEN), then run:\n  {retry}"
        ) from None
    logger.info("pushed %s to %s", run_dir, result["repo_url"])
    return result


def _without_secrets(text: str, token: str | None) -> str:
    """The error text with any token (given or from the environment) masked."""
    for secret in (token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        if secret:
            text = text.replace(secret, "***")
    return text
