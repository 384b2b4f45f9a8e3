"""The error every check of a run's configuration raises (the CLI prints it in one line, exit 2)."""


class ConfigurationError(ValueError):
    """The arguments cannot produce a working run; the message names the field and the fix."""


__all__ = ["ConfigurationError"]
