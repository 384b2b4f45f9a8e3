"""What every ``hf-ssl`` command does with its flags: a mistake is one line on stderr and exit code 2.

argparse's own reply to a mistake is the whole usage block (37 lines for ``hf-ssl pretrain``)
above the one line that matters; here that line comes alone, and a misspelt flag names the
closest real one (``--max_stepz`` -> ``--max_steps``). Help texts say each default once.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence


# A help text that already names its default ("(default: the recipe's)", "Default: all three").
_STATES_DEFAULT = re.compile(r"\bdefault[: ]", re.IGNORECASE)


def flag_names(parser: argparse.ArgumentParser) -> list[str]:
    """The first (underscore) spelling of every flag of `parser` and of its sub-commands: ``--max_steps``,
    not its ``--max-steps`` alias."""
    names = []
    for action in parser._actions:
        if action.option_strings:
            names.append(action.option_strings[0])
        elif isinstance(action, argparse._SubParsersAction):
            names += [name for command in action.choices.values() for name in flag_names(command)]
    return list(dict.fromkeys(names))


def unrecognized_arguments_message(unknown: Sequence[str], known_flags: Sequence[str]) -> str:
    """``unrecognized argument --max_stepz (did you mean --max_steps?)`` for the first unknown flag in `unknown`.

    Args:
        unknown: what the parser left over, flags and their values (``["--max_stepz", "5"]``).
        known_flags: the flags the command has.
    """
    flags = [item.split("=", 1)[0] for item in unknown if item.startswith("-")]
    if not flags:
        return f"unrecognized argument(s) {' '.join(unknown)} (no command takes extra values here)"
    close = difflib.get_close_matches(flags[0], known_flags, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unrecognized argument {flags[0]}{hint}"


class OneLineHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and adds ``(default: X)`` only where the help does not already
    say what the default is and there is one (no ``(default: None)``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action, argparse._StoreFalseAction) and action.option_strings[0].startswith("--no_"):
            return f"same as --{action.dest} false"
        if action.default is None or action.default is argparse.SUPPRESS or _STATES_DEFAULT.search(text):
            return text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose mistakes are one line, ``error: ...``, and exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", OneLineHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        arguments, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(unrecognized_arguments_message(unknown, flag_names(self)))
        return arguments

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        self.exit(2)
