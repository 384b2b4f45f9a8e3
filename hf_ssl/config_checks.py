"""The checks every method config runs in its `check_fields`: one error style, the config's name first."""

from __future__ import annotations

from collections.abc import Iterable


def require(config: object, condition: bool, message: str) -> None:
    """Raise ``ValueError("<config class>: <message>")`` unless `condition`."""
    if not condition:
        raise ValueError(f"{type(config).__name__}: {message}")


def require_positive_ints(config: object, names: Iterable[str]) -> None:
    """Each named field is an int >= 1 (a bool is not)."""
    for name in names:
        value = getattr(config, name)
        require(config, isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive int, got {value!r}")


__all__ = ["require", "require_positive_ints"]
