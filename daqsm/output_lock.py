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
import glob
import os

from daqsm.errors import InputError, output_path


def lock_path_for(path) -> str:
    full = os.path.abspath(str(path)).rstrip(os.sep) or os.sep
    return os.path.join(os.path.dirname(full), f".{os.path.basename(full)}.lock")


def temp_prefix(path) -> str:
    """Prefix of every temporary name of an output: `.tmp-NAME-` in the output's folder."""
    return f".tmp-{os.path.basename(os.path.abspath(str(path)).rstrip(os.sep))}-"


def remove_stale_temps(path) -> list[str]:
    """Remove temp files/folders of `path` left by a killed run (call while holding its lock)."""
    import shutil

    folder = os.path.dirname(os.path.abspath(str(path)).rstrip(os.sep))
    removed = []
    for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(temp_prefix(path)) + "*")):
        if os.path.isdir(stale) and not os.path.islink(stale):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(stale)
        removed.append(stale)
    return removed


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
def claim_output(option: str, path, kind: str = "file"):
    """Check, lock and clean an output: the one entry every command uses before it writes."""
    output_path(option, path, kind)
    created = _make_parents(path)
    try:
        with output_lock(option, path):
            remove_stale_temps(path)
            yield str(path)
    except BaseException:
        for folder in reversed(created):  # a failed run leaves no new folder behind
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


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
