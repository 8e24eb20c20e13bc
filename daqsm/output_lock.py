"""Exclusive ownership of an output while a command writes it, and clean-up of a killed run's temps.

`claim_output(option, path)` checks the path (errors.output_path), takes an exclusive lock beside
it and removes temporary files that an earlier, killed run left for the same output. A second run
on the same output stops at once with "in use by PID N".

The lock is `fcntl.flock` on a hidden file `.NAME.lock` beside the output (stdlib, no dependency):
the kernel drops a flock when its process dies, `kill -9` included, so a crashed run never leaves a
lock that blocks the next one (the file may stay; an unheld lock file is simply taken over). The
`filelock` package offers the same on POSIX (it uses flock too) but would not tell which process
holds the lock; the PID written into the file does.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

from daqsm.errors import InputError, output_path
from daqsm.outputs import remove_stale_temps, remove_temps_inside


def lock_path_for(path) -> str:
    full = os.path.abspath(str(path)).rstrip(os.sep) or os.sep
    return os.path.join(os.path.dirname(full), f".{os.path.basename(full)}.lock")


@contextlib.contextmanager
def output_lock(option: str, path):
    """Hold an exclusive lock on `path` (file or folder) for the duration of the block."""
    import fcntl

    lock = lock_path_for(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InputError(f"{option} {path}: in use by PID {holder} (another run writes this output); "
                             "wait for it to finish or choose another output") from None
        try:  # the holder before us may have removed the file after we opened it: retry on the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)
        os.close(fd)


@contextlib.contextmanager
def claim_output(option: str, path, kind: str = "file", companions=(), command: str | None = None):
    """Check, lock and clean an output: the one entry every command uses before it writes.

    Args:
        option: the option that named the output, for every message about it.
        path: the main output (file or folder).
        kind: 'file' or 'folder'.
        companions: the other files the command writes or replaces (sidecars, models, logs): each
            is checked and locked too, and a killed run's temps of each are removed.
        command: for a folder output, the command that owns it (see `claim_folder`).
    """
    paths = [str(path)] + [str(c) for c in companions if str(c) != str(path)]
    output_path(option, path, kind)
    for other in paths[1:]:
        output_path(option, other)
    if kind == "folder" and command:
        check_owned_folder(option, path, command)
    created = _make_parents(path)
    try:
        with contextlib.ExitStack() as stack:
            for member in sorted(set(paths)):  # one order for every command: no two runs half-hold a set
                stack.enter_context(output_lock(option, member))
            for member in paths:
                remove_stale_temps(member)
            if kind == "folder" and command:
                made = _mark_folder(path, command)
                created += [made] if made else []
                remove_temps_inside(path)
            yield str(path)
    except BaseException:
        for folder in reversed(created):  # a failed run leaves no new folder behind
            with contextlib.suppress(OSError):
                _remove_marked_empty(folder)
        raise


MARKER = ".daqsm-output"


def check_owned_folder(option: str, path, command: str) -> None:
    """A folder output is new, empty, or was made by `command` (its marker file): never a user's folder."""
    path = str(path)
    if not os.path.isdir(path):
        return
    names = [n for n in os.listdir(path) if not n.endswith(".lock")]
    if not names:
        return
    owner = _owner(path)
    if owner == command:
        return
    made = f"was made by {owner}" if owner else "was not made by " + command
    raise InputError(f"{option} {path}: folder exists, is not empty and {made}; choose a new or empty folder")


def _owner(path) -> str | None:
    try:
        with open(os.path.join(str(path), MARKER), encoding="utf-8") as fh:
            return str(json.load(fh).get("command"))
    except (OSError, ValueError, AttributeError):
        return None


def _mark_folder(path, command: str) -> str | None:
    """Write the marker (creating the folder); returns the folder when this call created it."""
    path = os.path.abspath(str(path))
    made = None
    if not os.path.isdir(path):
        os.mkdir(path)
        made = path
    if _owner(path) != command:
        from daqsm.outputs import write_text_atomic

        write_text_atomic(os.path.join(path, MARKER), json.dumps({"command": command}) + "\n")
    return made


def _remove_marked_empty(folder: str) -> None:
    """Remove a folder this run created: empty, or holding only its marker."""
    if os.path.isdir(folder) and set(os.listdir(folder)) <= {MARKER}:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, MARKER))
    os.rmdir(folder)


def _make_parents(path) -> list[str]:
    """Create the missing folders above `path`; returns them, outermost first."""
    missing = []
    parent = os.path.dirname(os.path.abspath(str(path)).rstrip(os.sep))
    while not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(missing):
        os.mkdir(folder)
    return list(reversed(missing))


@contextlib.contextmanager
def folder_removed_on_error(path):
    """A folder output that did not exist before is removed again if the block fails.

    For commands that fill a new folder with many files (simulate, the demo): a failed run leaves
    nothing behind; an existing folder is never removed.
    """
    import shutil

    created = not os.path.exists(str(path))
    try:
        yield
    except (Exception, SystemExit):  # SystemExit: a demo step failed and said why
        if created and os.path.isdir(str(path)):
            shutil.rmtree(str(path), ignore_errors=True)
        raise


class QsmSet:
    """The files of one susceptibility map (daqsm.outputs.qsm_set), held by the running command.

    `start_writing()` removes the old map (both suffixes) and a config under its older name before the
    first new file lands, so a killed --overwrite rerun never leaves an old map beside new companions
    (nor two configs); `commit(write_qsm)`
    writes the map last and clears the "incomplete" marker that lets a rerun replace a killed run's
    companions without --overwrite.
    """

    def __init__(self, paths: dict):
        self.paths = paths
        self.marker = incomplete_marker(paths["qsm"])

    def start_writing(self) -> None:
        for key in ("qsm", "other_qsm", "legacy_config"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.paths[key])

    def commit(self, write_qsm) -> None:
        self.start_writing()
        write_qsm(self.paths["qsm"])
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.marker)


def incomplete_marker(output) -> str:
    from daqsm.outputs import stem_of

    stem = os.path.abspath(stem_of(output))
    return os.path.join(os.path.dirname(stem), f".{os.path.basename(stem)}.incomplete")


def check_qsm_set(option: str, output, overwrite: bool, inputs=()) -> dict:
    """Before any work: the whole set of `output` may be written (daqsm.outputs.qsm_set); returns it.

    Refused: a set member that is an input (or the case.json beside one), even with --overwrite; an
    existing member without --overwrite, unless the set is a killed run's (its marker, no map).
    """
    from daqsm.outputs import qsm_set, refuse_existing, refuse_inputs_as_outputs

    paths = qsm_set(output)
    refuse_inputs_as_outputs(option, paths.values(), protected_inputs(inputs))
    interrupted = os.path.exists(incomplete_marker(output)) and not any(
        os.path.lexists(paths[k]) for k in ("qsm", "other_qsm"))
    refuse_existing(option, paths.values(), overwrite or interrupted)
    for path in paths.values():
        output_path(option, path)
    return paths


def protected_inputs(inputs) -> list[str]:
    """The inputs, every file of an input case folder and the case.json beside an input file."""
    out = []
    for path in inputs:
        if not path:
            continue
        path = str(path)
        out.append(path)
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            out += [os.path.join(path, n) for n in os.listdir(path)]
        out.append(os.path.join(folder, "case.json"))
    return out


@contextlib.contextmanager
def claim_qsm_set(option: str, output, overwrite: bool, inputs=()):
    """Check, lock and clean the whole set of a susceptibility map; yields a `QsmSet`."""
    paths = check_qsm_set(option, output, overwrite, inputs)
    members = [p for k, p in paths.items() if k != "qsm"]
    with claim_output(option, paths["qsm"], companions=members):
        # checked again under the lock: a run that finished meanwhile made its set complete
        paths = check_qsm_set(option, output, overwrite, inputs)
        qset = QsmSet(paths)
        leftovers = [p for p in members if os.path.lexists(p)]
        if leftovers and not overwrite:
            print(f"note: replacing {len(leftovers)} file(s) of an interrupted run of {output}", file=sys.stderr)
        from daqsm.outputs import write_text_atomic

        write_text_atomic(qset.marker, f"{os.getpid()}\n")
        try:
            yield qset
        except BaseException:
            if not any(os.path.lexists(p) for p in paths.values()):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(qset.marker)
            raise
