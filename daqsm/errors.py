"""One exception type for bad user input, and the CLI wrapper that turns it into exit status 2.

Outputs go through `output_path(option, path)`: it checks, before any work starts, that the path
can be written (its nearest existing folder is a writable folder, it is not a folder where a file
is expected) and records which option named it, so that an OSError at write time (a full disk, a
file-size limit, a folder made read-only meanwhile) becomes one line naming that option and path.
"""
from __future__ import annotations

import contextvars
import errno
import os
import sys
import tempfile
from typing import Callable, Sequence


class InputError(ValueError):
    """Bad user input. The message is one line: which input, what was expected, what was found."""


# (option, absolute path) of the outputs the running command declared, newest last: an immutable
# tuple per context (run_cli opens one per command), not a module-level list that commands share
_DECLARED: contextvars.ContextVar[tuple] = contextvars.ContextVar("daqsm_declared_outputs", default=())


def shape_mismatch(name_a: str, shape_a, name_b: str, shape_b) -> InputError:
    """Error for two inputs that must share a grid."""
    return InputError(f"shape mismatch: {name_a} {tuple(shape_a)} vs {name_b} {tuple(shape_b)}")


def output_path(option: str, path, kind: str = "file") -> str:
    """Declare and check an output before any work: returns `path` unchanged.

    Args:
        option: the option that named it (`-o`, `--run_dir`), used in every error about it.
        path: the file or folder to be written.
        kind: 'file' or 'folder'.

    Raises:
        InputError: the path is under a regular file, a folder stands where a file is expected (or
            the reverse), or the nearest existing folder cannot be written.
    """
    path = str(path)
    full = os.path.abspath(path)
    _DECLARED.set(_DECLARED.get() + ((option, full),))
    if kind == "file" and os.path.isdir(full):
        raise InputError(f"{option} {path}: expected a file path, found a folder")
    if kind == "folder" and os.path.exists(full) and not os.path.isdir(full):
        raise InputError(f"{option} {path}: expected a folder, found a file")
    if kind == "file" and os.path.exists(full) and not os.path.isfile(full):
        raise InputError(f"{option} {path}: expected a regular file, found {_kind_of(full)}")
    existing = full if kind == "folder" and os.path.isdir(full) else os.path.dirname(full)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{option} {path}: cannot create it, {existing} is a file, not a folder")
    _probe_writable(option, path, existing)
    return path


def _kind_of(path) -> str:
    return "a link to nowhere" if os.path.islink(path) and not os.path.exists(path) else "a special file"


def _probe_writable(option: str, path: str, folder: str) -> None:
    """Create and remove one empty temp file: the only test that sees read-only mounts, immutable
    folders and missing permissions alike (os.access is always true for root)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
    except OSError as err:
        raise InputError(f"{option} {path}: cannot write in {folder} ({_reason(err)})") from None
    os.close(fd)
    os.remove(probe)


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno == errno.EFBIG:
        return "file size limit exceeded"
    return err.strerror or type(err).__name__


def describe_os_error(err: OSError) -> str:
    """One line for an OSError raised while writing: the output option and path when known."""
    name = getattr(err, "filename", None)
    reason = _reason(err) if err.errno else str(err).splitlines()[0][:200] or type(err).__name__
    if name:
        full = os.path.abspath(os.fsdecode(name))
        for option, out in reversed(_DECLARED.get()):
            if full == out or full.startswith(out.rstrip(os.sep) + os.sep) or \
                    os.path.dirname(full) == os.path.dirname(out):
                return f"{option} {out}: cannot write ({reason})"
        return f"{os.fsdecode(name)}: {reason}"
    if _DECLARED.get():  # h5py / TensorFlow errors often carry no file name: the output being written
        option, out = _DECLARED.get()[-1]
        return f"{option} {out}: cannot write ({reason})"
    return f"input/output error: {reason}"


def run_cli(main_body: Callable[[], int], prog: str) -> int:
    """Run a command body; an InputError or an OSError becomes one line on stderr and exit status 2.

    Set QSM_DEBUG=1 to get the traceback instead.
    """
    token = _DECLARED.set(())  # the demo runs commands inside its own run_cli: each sees its own
    try:
        return int(main_body() or 0)
    except InputError as err:
        if os.environ.get("QSM_DEBUG"):
            raise
        print(f"{prog}: error: {str(err).splitlines()[0] if str(err) else 'bad input'}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable output, full disk, file-size limit: never a traceback
        if os.environ.get("QSM_DEBUG"):
            raise
        print(f"{prog}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    finally:
        _DECLARED.reset(token)


def choices_message(name: str, value: str, valid: Sequence[str]) -> InputError:
    """Unknown option value: list the valid ones and suggest the nearest."""
    return InputError(f"{name}: unknown value {value!r}; expected one of {', '.join(valid)}{did_you_mean(value, valid)}")


def did_you_mean(value, valid: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the nearest valid name, or '': the one hint of every message."""
    import difflib

    near = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""
