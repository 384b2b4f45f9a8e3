"""Does a ``--model`` / ``--dataset_name`` value mean a local folder or a Hub id?

A Hub id is ``name`` or ``org/name``. A value that exists on disk is local. So is one written
the way only a path is: it starts with ``/``, ``./``, ``../`` or ``~``, holds a backslash or more
than one ``/``, starts with ``runs/`` (where hf-ssl writes its run folders), or its first part is
a folder that exists here (``my_runs/x`` next to ``my_runs/``). A local value that does not exist
is a mistake to report at once: taken as a Hub id it would fail offline, and online it spends half
a minute on requests and retries before failing with a traceback.
"""

from __future__ import annotations

from pathlib import Path

RUNS_FOLDER = "runs"
_PATH_STARTS = ("/", "./", "../", "~", ".\\", "..\\")


def looks_local(name: str) -> bool:
    """True when `name` can only mean a path on this machine (see the module docstring)."""
    if Path(name).exists() or name in (".", "..") or name.startswith(_PATH_STARTS):
        return True
    if "\\" in name or name.strip("/").count("/") > 1:
        return True
    first, _, rest = name.partition("/")
    return bool(rest) and (first == RUNS_FOLDER or Path(first).is_dir())


def missing_local_path(name: str) -> bool:
    """True when `name` means a local path (`looks_local`) that does not exist."""
    return looks_local(name) and not Path(name).exists()


def check_local_path(name: str, flag: str, error_type: type[ValueError] = ValueError) -> None:
    """Raise when `name` means a local path that does not exist.

    Args:
        flag: how the message names the value (``"--model"``).
        error_type: the caller's error for a bad argument.

    Raises:
        error_type: ``--model 'runs/no_such_run': no such folder (relative to /home/me)``.
    """
    if missing_local_path(name):
        relative = not (Path(name).is_absolute() or name.startswith("~"))
        raise error_type(f"{flag} {name!r}: no such folder" + (f" (relative to {Path.cwd()})" if relative else ""))
