"""One exception type for bad user input, and the CLI wrapper that turns it into exit status 2."""
from __future__ import annotations

import sys
from typing import Callable, Sequence


class InputError(ValueError):
    """Bad user input. The message is one line: which input, what was expected, what was found."""


def shape_mismatch(name_a: str, shape_a, name_b: str, shape_b) -> InputError:
    """Error for two inputs that must share a grid."""
    return InputError(f"shape mismatch: {name_a} {tuple(shape_a)} vs {name_b} {tuple(shape_b)}")


def run_cli(main_body: Callable[[], int], prog: str) -> int:
    """Run a command body; an InputError becomes one line on stderr and exit status 2.

    Set QSM_DEBUG=1 to get the traceback instead.
    """
    import os

    try:
        return int(main_body() or 0)
    except InputError as err:
        if os.environ.get("QSM_DEBUG"):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


def choices_message(name: str, value: str, valid: Sequence[str]) -> InputError:
    """Unknown option value: list the valid ones and suggest the nearest."""
    import difflib

    near = difflib.get_close_matches(str(value), list(valid), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return InputError(f"{name}: unknown value {value!r}; expected one of {', '.join(valid)}{hint}")
