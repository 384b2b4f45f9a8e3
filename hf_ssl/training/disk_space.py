"""A full disk while saving: one line naming the folder, the space needed and the space free.

Python's writers raise ``OSError(ENOSPC)`` (``EDQUOT`` once a quota is reached); safetensors' Rust
writer raises a `SafetensorError` whose message carries the same OS error. `is_disk_full`
recognises both, and `DiskFullError` is the `ConfigurationError` the CLI prints in one line
(exit code 2): it is the machine, not the run, that needs a change before resuming.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from safetensors import SafetensorError

from .errors import ConfigurationError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How safetensors (Rust's std::io::Error, debug-formatted) names ENOSPC / EDQUOT.
_SAFETENSORS_DISK_FULL = ("StorageFull", "FilesystemQuotaExceeded", f"code: {errno.ENOSPC},", f"code: {errno.EDQUOT},")


class DiskFullError(ConfigurationError):
    """A write found no space left; the message names the folder, the space needed and free, and what to do."""


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in DISK_FULL_ERRNOS
    return isinstance(error, SafetensorError) and any(marker in str(error) for marker in _SAFETENSORS_DISK_FULL)


def human_bytes(count: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} bytes"


def free_bytes(folder: str | Path) -> int:
    """Free space on the device holding `folder` (or its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def folder_bytes(folder: str | Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def disk_full_error(folder: str | Path, writing: str, needed_bytes: int, then: str) -> DiskFullError:
    """The one-line error for a write of `writing` into `folder` that ran out of space.

    Args:
        needed_bytes: what the write needs (an estimate, said as "about").
        then: what the user does once space is free (the resume command, ...).
    """
    return DiskFullError(
        f"no space left on the device holding {folder} while writing {writing}: it needs about "
        f"{human_bytes(needed_bytes)}, {human_bytes(free_bytes(folder))} free. {then}"
    )
