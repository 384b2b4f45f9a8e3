"""Atomic, verifiable, pickle-free checkpoints: model, optimizer, RNG and data position.

Layout of ``<output_dir>/checkpoints/checkpoint-<step>/`` (every file safetensors or JSON; nothing
is ever unpickled, so a checkpoint from elsewhere cannot run code when it is resumed):

    model.safetensors                        weights of the (unwrapped) model; ``model_<i>`` for more
    optimizer.json + optimizer.safetensors   structure and scalars / tensors of the optimizer state
    scheduler*, scaler.json, custom_state*   other objects `accelerate` prepared or registered
    random_states_<rank>.json (+ .safetensors)  python, numpy, torch CPU (and CUDA) RNG per process
    data_state_<rank>.json (+ .safetensors)     each process's exact position in its data stream
    trainer_state.json                       step, images seen, skipped samples, world size
    run_arguments.json                       the arguments a resume must not change
    manifest.json                            size and sha256 of every file above

accelerate's `save_state` is not used: it pickles the optimizer and RNG states (accelerate 1.15,
``accelerate/checkpointing.py``). Nested state (dicts, lists, tuples, numbers, strings, tensors,
numpy arrays) is split into a JSON structure whose tensors are references into a safetensors file.

A checkpoint is written into ``.tmp-checkpoint-<step>`` and renamed once every process has
finished and the manifest is written, so a kill -9 during a save leaves only a temporary folder
(ignored, later removed). A save that finds the disk full on any process removes the temporary
folder and raises `DiskFullError` on every process (one line: the folder, the space needed and
free); the checkpoints before it stay as they were. Truncated, emptied or altered files are caught by the manifest:
`latest_checkpoint` falls back to the newest intact checkpoint with a warning naming the file;
`load_checkpoint` raises `DamagedCheckpointError` naming it. Supports single-process and DDP runs
(every process holds the full model and optimizer) and FSDP2 runs, whose shards are gathered into
the same whole-tensor files and scattered back on resume (`hf_ssl.training.sharding`); DeepSpeed
and Megatron-LM are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import load_file as load_tensors
from safetensors.torch import load_model as load_model_weights
from safetensors.torch import save_file as save_tensors
from safetensors.torch import save_model as save_model_weights

from hf_ssl.distributed import largest_over_processes
from hf_ssl.plots import read_training_log

from .errors import ConfigurationError
from .disk_space import disk_full_error, folder_bytes, is_disk_full
from .sharding import (
    full_model_state,
    full_optimizer_state,
    is_fully_sharded,
    load_full_model_state,
    load_full_optimizer_state,
)

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TEMPORARY_PREFIX = ".tmp-checkpoint-"
REMOVING_PREFIX = ".tmp-removing-"
TRAINER_STATE_NAME = "trainer_state.json"
RUN_ARGUMENTS_NAME = "run_arguments.json"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "hf-ssl-checkpoint/1"
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth", ".pickle", ".ckpt")
# Sharded states with their own save paths in accelerate; FSDP2 is gathered here, every other type is DDP-like.
UNSUPPORTED_DISTRIBUTED_TYPES = (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM, DistributedType.XLA)


class DamagedCheckpointError(ConfigurationError):
    """A checkpoint file is missing, truncated, altered or unreadable; the message names it."""

    def __init__(self, checkpoint: str | Path, file: str, problem: str):
        self.checkpoint = Path(checkpoint)
        self.file = file
        self.problem = problem
        super().__init__(f"checkpoint {checkpoint} is damaged: {file} {problem}")


# ----------------------------------------------------------------------------- listing


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_step(path: str | Path) -> int:
    """The step of a ``checkpoint-<step>`` folder."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint-<step> folder")
    return int(match.group(1))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders that were completely written (renamed into place), oldest first.

    Their files are not verified here (see `verify_checkpoint`).
    """
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest intact checkpoint, or None when the run has none.

    A damaged newer checkpoint is skipped with a warning that names its damaged file.

    Raises:
        DamagedCheckpointError: checkpoints exist but none is intact (names the newest's damage).
    """
    checkpoints = list_checkpoints(output_dir)
    newest_damage = None
    for checkpoint in reversed(checkpoints):
        try:
            verify_checkpoint(checkpoint)
        except DamagedCheckpointError as error:
            logger.warning("%s; skipping it", error)
            newest_damage = newest_damage or error
            continue
        if newest_damage is not None:
            logger.warning("Resuming from %s, the newest intact checkpoint", checkpoint)
        return checkpoint
    if newest_damage is not None:
        raise DamagedCheckpointError(
            newest_damage.checkpoint, newest_damage.file, f"{newest_damage.problem} (and no older checkpoint is intact)"
        )
    return None


# ----------------------------------------------------------------------------- manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(checkpoint: str | Path) -> dict:
    """Write ``manifest.json`` (size and sha256 of every other file of `checkpoint`); returns it."""
    checkpoint = Path(checkpoint)
    files = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            name = path.relative_to(checkpoint).as_posix()
            files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    _write_json_durably(checkpoint / MANIFEST_NAME, manifest)
    return manifest


def _read_manifest(checkpoint: Path) -> dict:
    path = checkpoint / MANIFEST_NAME
    if not path.is_file():
        pickles = sorted(item.name for item in checkpoint.iterdir() if item.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise DamagedCheckpointError(
                checkpoint, MANIFEST_NAME,
                f"is missing: the checkpoint holds pickle files ({', '.join(pickles)}) from an older hf-ssl, which are "
                "never loaded because unpickling can run code; start the run again with --overwrite_output_dir",
            )
        raise DamagedCheckpointError(checkpoint, MANIFEST_NAME, "is missing")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedCheckpointError(checkpoint, MANIFEST_NAME, f"does not parse ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
        raise DamagedCheckpointError(checkpoint, MANIFEST_NAME, f"is not an {MANIFEST_FORMAT} manifest")
    return manifest


def verify_checkpoint(checkpoint: str | Path) -> dict:
    """Check every file of `checkpoint` against its manifest (presence, size, sha256); returns the manifest.

    Raises:
        DamagedCheckpointError: names the first missing, truncated or altered file.
    """
    checkpoint = Path(checkpoint)
    manifest = _read_manifest(checkpoint)
    if TRAINER_STATE_NAME not in manifest["files"]:
        raise DamagedCheckpointError(checkpoint, MANIFEST_NAME, f"does not list {TRAINER_STATE_NAME}")
    for name, expected in sorted(manifest["files"].items()):
        path = checkpoint / name
        if not path.is_file():
            raise DamagedCheckpointError(checkpoint, name, "is missing")
        size = path.stat().st_size
        if size != expected.get("bytes"):
            kind = "empty" if size == 0 else ("truncated" if size < expected.get("bytes", 0) else "longer than written")
            raise DamagedCheckpointError(checkpoint, name, f"is {kind}: {size} bytes, {expected.get('bytes')} written")
        if _sha256(path) != expected.get("sha256"):
            raise DamagedCheckpointError(checkpoint, name, "was altered: its sha256 differs from the manifest")
    return manifest


# ----------------------------------------------------------------------------- state <-> JSON + tensors

_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__items__", "__numpy_scalar__")


def split_state(value: Any, prefix: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested state into a JSON-able structure and the tensors it references.

    Tensors become ``{"__tensor__": key}``, numpy arrays ``{"__ndarray__": key, "dtype": ...}``,
    tuples ``{"__tuple__": [...]}`` and dicts with non-string keys ``{"__items__": [[k, v], ...]}``,
    so that `join_state` rebuilds the same types (optimizer states have int keys and tuple betas).

    Raises:
        TypeError: a value that is neither JSON nor a tensor / numpy array (names its path).
    """
    tensors: dict[str, torch.Tensor] = {}

    def store(path: str, tensor: torch.Tensor) -> str:
        key, suffix = path, 1
        while key in tensors:  # "a.b" as one key and as a nested path
            key, suffix = f"{path}#{suffix}", suffix + 1
        tensors[key] = tensor
        return key

    def encode(item: Any, path: str) -> Any:
        if item is None or isinstance(item, (bool, int, float, str)):
            return item
        if isinstance(item, torch.Tensor):
            return {"__tensor__": store(path, item.detach().cpu().contiguous())}
        if isinstance(item, np.ndarray):
            # Unsigned arrays (numpy's MT19937 key is uint32) go through int64, which safetensors stores.
            stored = np.ascontiguousarray(item).astype(np.int64 if item.dtype.kind in "ui" else item.dtype)
            return {"__ndarray__": store(path, torch.from_numpy(stored)), "dtype": item.dtype.str}
        if isinstance(item, np.generic):
            return {"__numpy_scalar__": item.item(), "dtype": item.dtype.str}
        if isinstance(item, tuple):
            return {"__tuple__": [encode(element, f"{path}.{index}") for index, element in enumerate(item)]}
        if isinstance(item, list):
            return [encode(element, f"{path}.{index}") for index, element in enumerate(item)]
        if isinstance(item, dict):
            if all(isinstance(key, str) for key in item) and not any(key in _TAGS for key in item):
                return {key: encode(element, f"{path}.{key}") for key, element in item.items()}
            return {"__items__": [[encode(key, f"{path}.key{index}"), encode(element, f"{path}.{key}")]
                                  for index, (key, element) in enumerate(item.items())]}
        raise TypeError(f"cannot store {type(item).__name__} at {path} in a checkpoint (only JSON values and tensors)")

    return encode(value, prefix), tensors


def join_state(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_state`."""
    if isinstance(structure, list):
        return [join_state(element, tensors) for element in structure]
    if not isinstance(structure, dict):
        return structure
    if "__tensor__" in structure:
        return tensors[structure["__tensor__"]]
    if "__ndarray__" in structure:
        return tensors[structure["__ndarray__"]].numpy().astype(np.dtype(structure["dtype"]))
    if "__numpy_scalar__" in structure:
        return np.dtype(structure["dtype"]).type(structure["__numpy_scalar__"])
    if "__tuple__" in structure:
        return tuple(join_state(element, tensors) for element in structure["__tuple__"])
    if "__items__" in structure:
        return {join_state(key, tensors): join_state(value, tensors) for key, value in structure["__items__"]}
    return {key: join_state(value, tensors) for key, value in structure.items()}


def _make_durable(path: Path) -> None:
    """fsync a file just written (every checkpoint file goes through here)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_json_durably(path: Path, payload: Any, **dump_options) -> None:
    path.write_text(json.dumps(payload, **dump_options))
    _make_durable(path)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _separate_storages(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory: copy all but the first user of a storage."""
    seen, result = set(), {}
    for name, tensor in tensors.items():
        storage = (tensor.untyped_storage().data_ptr(), tensor.device) if tensor.numel() else None
        result[name] = tensor.clone() if storage is not None and storage in seen else tensor
        seen.add(storage)
    return result


def save_state_files(folder: str | Path, name: str, state: Any) -> list[str]:
    """Write `state` as ``<name>.json`` (+ ``<name>.safetensors`` when it holds tensors); returns file names."""
    folder = Path(folder)
    structure, tensors = split_state(state)
    written = [f"{name}.json"]
    if tensors:
        save_tensors(_separate_storages(tensors), str(folder / f"{name}.safetensors"))
        _make_durable(folder / f"{name}.safetensors")
        written.append(f"{name}.safetensors")
    _write_json_durably(folder / f"{name}.json", {"tensors_file": f"{name}.safetensors" if tensors else None, "state": structure})
    return written


def load_state_files(folder: str | Path, name: str) -> Any:
    """Read what `save_state_files` wrote; a file that does not parse raises `DamagedCheckpointError`."""
    folder = Path(folder)
    json_name = f"{name}.json"
    if not (folder / json_name).is_file():
        raise DamagedCheckpointError(folder, json_name, "is missing")
    try:
        payload = json.loads((folder / json_name).read_bytes())
        structure, tensors_file = payload["state"], payload["tensors_file"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise DamagedCheckpointError(folder, json_name, f"does not parse ({type(error).__name__}: {error})") from None
    tensors = {}
    if tensors_file is not None:
        if tensors_file != f"{name}.safetensors" or not (folder / tensors_file).is_file():
            raise DamagedCheckpointError(folder, f"{name}.safetensors", "is missing")
        try:
            tensors = load_tensors(str(folder / tensors_file))
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise DamagedCheckpointError(folder, tensors_file, f"does not parse ({error})") from None
    try:
        return join_state(structure, tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise DamagedCheckpointError(folder, json_name, f"does not match {tensors_file} ({error})") from None


# ----------------------------------------------------------------------------- RNG


def random_states(accelerator: Accelerator) -> dict:
    """This process's RNG states (python, numpy, torch CPU, CUDA when present) and accelerate's step."""
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "accelerator_step": accelerator.step,
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(accelerator: Accelerator, states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    accelerator.step = states["accelerator_step"]


# ----------------------------------------------------------------------------- save / load


def _numbered(name: str, index: int) -> str:
    return name if index == 0 else f"{name}_{index}"


def _check_distributed_type(accelerator: Accelerator) -> None:
    if accelerator.distributed_type in UNSUPPORTED_DISTRIBUTED_TYPES or (
        is_fully_sharded(accelerator) and not accelerator.is_fsdp2
    ):
        raise RuntimeError(
            f"hf-ssl checkpoints support single-process, DDP and FSDP2 runs, not {accelerator.distributed_type}: "
            "its sharded model and optimizer states would need accelerate's pickle-based save_state"
        )
    if is_fully_sharded(accelerator) and (len(accelerator._models), len(accelerator._optimizers)) != (1, 1):
        raise RuntimeError("hf-ssl checkpoints of FSDP runs hold one model and one optimizer")


def _gather_sharded_states(accelerator: Accelerator) -> tuple[dict, dict] | None:
    """Under FSDP, the whole model and optimizer states on the main process (collective); else None."""
    if not is_fully_sharded(accelerator):
        return None
    model = accelerator._models[0]
    return full_model_state(model), full_optimizer_state(model, accelerator._optimizers[0].optimizer)


def _write_main_process_files(accelerator: Accelerator, folder: Path, trainer_state: dict, run_arguments: dict | None,
                              sharded_states: tuple[dict, dict] | None = None) -> None:
    if sharded_states is not None:  # FSDP: the gathered whole states, in the same files
        model_state, optimizer_state = sharded_states
        save_tensors(_separate_storages({name: tensor.contiguous() for name, tensor in model_state.items()}),
                     str(folder / "model.safetensors"))
        _make_durable(folder / "model.safetensors")
        save_state_files(folder, "optimizer", optimizer_state)
    else:
        for index, model in enumerate(accelerator._models):
            path = folder / f"{_numbered('model', index)}.safetensors"
            save_model_weights(accelerator.unwrap_model(model), str(path), force_contiguous=True)
            _make_durable(path)
        for index, optimizer in enumerate(accelerator._optimizers):
            save_state_files(folder, _numbered("optimizer", index), optimizer.state_dict())
    for index, scheduler in enumerate(accelerator._schedulers):
        save_state_files(folder, _numbered("scheduler", index), scheduler.state_dict())
    if accelerator.scaler is not None:
        save_state_files(folder, "scaler", accelerator.scaler.state_dict())
    for index, custom_object in enumerate(accelerator._custom_objects):
        save_state_files(folder, f"custom_state_{index}", custom_object.state_dict())
    _write_json_durably(folder / TRAINER_STATE_NAME, trainer_state, indent=2)
    if run_arguments is not None:
        _write_json_durably(folder / RUN_ARGUMENTS_NAME, run_arguments, indent=2, sort_keys=True)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    trainer_state: dict,
    data_state: dict,
    save_total_limit: int,
    run_arguments: dict | None = None,
) -> Path:
    """Write checkpoint `step` atomically on every process, then keep the newest `save_total_limit`.

    Saves every model, optimizer and scheduler `accelerator.prepare` returned, its gradient scaler,
    the objects given to `accelerator.register_for_checkpointing` (their ``state_dict()`` must
    hold JSON values and tensors), and every process's RNG states.

    Args:
        trainer_state: JSON-able run counters (main process writes them).
        data_state: this process's data position (`TrainingBatches.state_dict()`), JSON values and tensors.
        run_arguments: JSON-able arguments a resume must not change (see `hf_ssl.training.run_folder`).
    """
    _check_distributed_type(accelerator)
    # FSDP runs save name-keyed optimizer states, DDP runs index-keyed ones: a resume must not switch.
    trainer_state = {**trainer_state, "fully_sharded": is_fully_sharded(accelerator)}
    root = checkpoints_root(output_dir)
    temporary = root / f"{TEMPORARY_PREFIX}{step}"
    final = root / f"checkpoint-{step}"
    main = accelerator.is_main_process
    sharded_states = _gather_sharded_states(accelerator)  # collective: before any write can fail on one process

    def write_files() -> None:
        rank = accelerator.process_index
        save_state_files(temporary, f"random_states_{rank}", random_states(accelerator))
        save_state_files(temporary, f"data_state_{rank}", data_state)
        if main:
            _write_main_process_files(accelerator, temporary, trainer_state, run_arguments, sharded_states)

    def publish() -> None:
        write_manifest(temporary)
        if final.exists():
            # Same step saved again (e.g. a resumed run reaching a stale checkpoint): swap, then drop the old one.
            previous = root / f"{REMOVING_PREFIX}checkpoint-{step}"
            os.replace(final, previous)
            os.replace(temporary, final)
            shutil.rmtree(previous)
        else:
            os.replace(temporary, final)
        _fsync_directory(root)
        prune_checkpoints(output_dir, save_total_limit, newest_step=step)

    # Each phase ends with every process learning whether any found the disk full (also the barrier).
    disk_full = _any_process(accelerator, main and _finds_disk_full(lambda: _fresh_folder(temporary)))
    if not disk_full:
        disk_full = _any_process(accelerator, _finds_disk_full(write_files))
    if not disk_full:
        disk_full = _any_process(accelerator, main and _finds_disk_full(publish))
    if disk_full:
        if main:
            shutil.rmtree(temporary, ignore_errors=True)
        intact = list_checkpoints(output_dir)
        raise disk_full_error(
            root, f"checkpoint-{step}", folder_bytes(intact[-1]) if intact else 3 * _model_bytes(accelerator),
            f"The partial checkpoint was removed{f'; {intact[-1].name} is the newest intact one' if intact else ''}. "
            "Free space, then run the same command with --resume_from_checkpoint latest",
        )
    return final


def _fresh_folder(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _finds_disk_full(write) -> bool:
    """Run `write`; True when it stopped on a full disk (any other error propagates)."""
    try:
        write()
    except (OSError, SafetensorError) as error:
        if not is_disk_full(error):
            raise
        return True
    return False


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether `flag` holds on any process (a collective: every process must call it)."""
    return largest_over_processes(int(flag), accelerator.device) > 0


def _model_bytes(accelerator: Accelerator) -> int:
    """Bytes of the weights of every prepared model (a checkpoint holds them and AdamW's two moments)."""
    return sum(parameter.numel() * parameter.element_size() for model in accelerator._models for parameter in model.parameters())


def _remove_tree(path: Path) -> None:
    """Rename out of the checkpoint namespace first, so a kill mid-delete leaves no half checkpoint."""
    doomed = path.parent / f"{REMOVING_PREFIX}{path.name}"
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def prune_checkpoints(output_dir: str | Path, save_total_limit: int, newest_step: int | None = None) -> list[Path]:
    """Delete all but the newest `save_total_limit` (>= 1) checkpoints, and stale temporary folders.

    Args:
        newest_step: the step just saved; checkpoints after it belong to an earlier attempt this
            run was resumed from before (their log lines were dropped on resume) and are deleted.

    Returns:
        The deleted checkpoint folders.
    """
    if save_total_limit < 1:
        raise ValueError(f"save_total_limit must be >= 1 (the newest checkpoint is never deleted), got {save_total_limit}")
    checkpoints = list_checkpoints(output_dir)
    stale = [path for path in checkpoints if newest_step is not None and checkpoint_step(path) > newest_step]
    current = [path for path in checkpoints if path not in stale]
    removed = stale + current[:-save_total_limit]
    for path in removed:
        _remove_tree(path)
    for path in checkpoints_root(output_dir).glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    return removed


def read_run_arguments(checkpoint: str | Path) -> dict | None:
    """The ``run_arguments.json`` of a checkpoint (None for checkpoints written without it)."""
    path = Path(checkpoint) / RUN_ARGUMENTS_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedCheckpointError(checkpoint, RUN_ARGUMENTS_NAME, f"does not parse ({error})") from None


def _require_listed(checkpoint: Path, manifest: dict, names: Iterable[str]) -> None:
    for name in names:
        if name not in manifest["files"]:
            raise DamagedCheckpointError(checkpoint, name, "is missing (not in the manifest)")


def _load_model_weights(checkpoint: Path, model: torch.nn.Module, name: str, sharded: bool = False) -> None:
    try:
        if sharded:
            load_full_model_state(model, load_tensors(str(checkpoint / name)))
        else:
            load_model_weights(model, str(checkpoint / name), strict=True)
    except (SafetensorError, OSError) as error:
        raise DamagedCheckpointError(checkpoint, name, f"does not parse ({error})") from None
    except RuntimeError as error:
        raise DamagedCheckpointError(checkpoint, name, f"does not fit the model ({error})".replace("\n", " ")) from None


def load_checkpoint(accelerator: Accelerator, checkpoint: str | Path) -> tuple[dict, dict]:
    """Verify `checkpoint`, restore models, optimizers, schedulers, scaler, registered objects and
    this process's RNG states; return ``(trainer_state, this process's data_state)``.

    Raises:
        DamagedCheckpointError: a file is missing, truncated, altered or does not parse.
        ValueError: the checkpoint was written by a different number of processes, or by an FSDP
            run for a DDP one or the reverse.
    """
    _check_distributed_type(accelerator)
    checkpoint = Path(checkpoint)
    manifest = verify_checkpoint(checkpoint)
    try:
        trainer_state = json.loads((checkpoint / TRAINER_STATE_NAME).read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedCheckpointError(checkpoint, TRAINER_STATE_NAME, f"does not parse ({error})") from None
    if trainer_state.get("world_size") != accelerator.num_processes:
        raise ValueError(
            f"Checkpoint {checkpoint} was written by {trainer_state.get('world_size')} processes, this run has "
            f"{accelerator.num_processes}: exact resume needs the same number of processes"
        )
    # None: written before checkpoints recorded it.
    written_sharded, sharded = trainer_state.pop("fully_sharded", None), is_fully_sharded(accelerator)
    if written_sharded is not None and written_sharded != sharded:
        def kind(fully_sharded: bool) -> str:
            return "an FSDP" if fully_sharded else "a DDP (or single-process)"

        raise ConfigurationError(
            f"Checkpoint {checkpoint} was written by {kind(written_sharded)} run, this run is {kind(sharded)} run: "
            "their optimizer states are laid out differently; resume with the accelerate config the run started with"
        )
    rank = accelerator.process_index
    model_files = [f"{_numbered('model', index)}.safetensors" for index in range(len(accelerator._models))]
    _require_listed(checkpoint, manifest, model_files + [f"random_states_{rank}.json", f"data_state_{rank}.json"])
    for model, name in zip(accelerator._models, model_files):
        _load_model_weights(checkpoint, accelerator.unwrap_model(model), name, sharded=is_fully_sharded(accelerator))
    objects = [(_numbered("optimizer", index), item) for index, item in enumerate(accelerator._optimizers)]
    if is_fully_sharded(accelerator):  # whole state keyed by parameter name, scattered into the shards
        model, optimizer = accelerator._models[0], accelerator._optimizers[0].optimizer
        objects[0] = ("optimizer", _ShardedOptimizerState(model, optimizer))
    objects += [(_numbered("scheduler", index), item) for index, item in enumerate(accelerator._schedulers)]
    objects += [("scaler", accelerator.scaler)] if accelerator.scaler is not None else []
    objects += [(f"custom_state_{index}", item) for index, item in enumerate(accelerator._custom_objects)]
    for name, item in objects:
        _require_listed(checkpoint, manifest, [f"{name}.json"])
        state = load_state_files(checkpoint, name)
        try:
            item.load_state_dict(state)
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise DamagedCheckpointError(checkpoint, f"{name}.json", f"does not fit this run ({error})") from None
    set_random_states(accelerator, load_state_files(checkpoint, f"random_states_{rank}"))
    data_state = load_state_files(checkpoint, f"data_state_{rank}")
    return trainer_state, data_state


class _ShardedOptimizerState:
    """`load_state_dict` of an FSDP run's optimizer from the whole, name-keyed state it saved."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def load_state_dict(self, state: dict) -> None:
        load_full_optimizer_state(self.model, self.optimizer, state)


def truncate_training_log(log_path: str | Path, last_step: int) -> None:
    """Drop log lines after `last_step` (a killed run may have logged past its last checkpoint), and
    torn lines (a record cut off mid-write), with a note naming them."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return
    torn: list[int] = []
    kept = [record for record in read_training_log(log_path, torn) if record.get("step", 0) <= last_step]
    if torn:
        logger.warning("%s: dropped line(s) %s, cut off mid-record when the run stopped", log_path.name,
                       ", ".join(map(str, torn)))
    temporary = log_path.with_suffix(".jsonl.tmp")
    temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
    os.replace(temporary, log_path)
