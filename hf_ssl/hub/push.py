"""Push a run folder (and its exported backbone) to the Hugging Face Hub.

`push_run_folder(run_dir, repo_id)` makes the folder Hub-ready (model card, modeling code and
``auto_map`` for ``trust_remote_code``), then uploads it with `HfApi.create_repo` /
`HfApi.upload_folder`; ``run_dir/backbone`` goes to ``<repo_id>-backbone``. Training state
(checkpoints/, logs/) and feature caches are never uploaded.

Tokens: the `token` argument, else ``HF_TOKEN`` or the login cache, resolved by huggingface_hub.
No token is ever written to a file or a log by hf-ssl. A failed upload leaves the local folder as
it was and raises `PushError` with the command that retries it.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from .cards import write_model_card
from .loading import check_safetensors_only, list_checkpoint_files
from .remote_code import add_remote_code

logger = logging.getLogger(__name__)

NEVER_PUSHED = ["checkpoints/**", "logs/**", "eval_cache/**", "backbone/**", "*.bin", "*.pt", "*.pth", "*.ckpt", ".*"]


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


def _upload(api, folder: Path, repo_id: str, private: bool, revision: str | None, token, commit_message: str,
            ignore_patterns: list[str]) -> str:
    api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=ignore_patterns,
        token=token,
    )
    return commit.oid


def prepare_run_folder(run_dir: str | os.PathLike, repo_id: str | None = None) -> dict:
    """Make a run folder Hub-ready in place: safetensors check, remote code + auto_map, model cards."""
    run_dir = Path(run_dir)
    check_safetensors_only(list_checkpoint_files(run_dir), str(run_dir))
    auto_map = add_remote_code(run_dir)
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
        result["commit"] = _upload(api, run_dir, repo_id, private, revision, token, message, NEVER_PUSHED)
        if pushing_backbone:
            backbone_repo_id = f"{repo_id}-backbone"
            check_safetensors_only(list_checkpoint_files(backbone_dir), str(backbone_dir))
            result["backbone_repo_id"] = backbone_repo_id
            result["backbone_repo_url"] = f"{api.endpoint}/{backbone_repo_id}"
            result["backbone_commit"] = _upload(
                api, backbone_dir, backbone_repo_id, private, revision, token, message + " (encoder)",
                [pattern for pattern in NEVER_PUSHED if pattern != "backbone/**"],
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
