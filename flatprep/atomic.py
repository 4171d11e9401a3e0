"""Atomic file writes: write to a temporary name beside the target, then rename.

A reader (or a rerun after a crash) sees either the old file or the complete
new one, never a partial file. Temporary names are
``.<target name>.<pid>-<host>.<random>.tmp`` (or the target's suffix instead of
``.tmp``, for writers that infer the format from it): a later run can tell
debris left by a killed process (:func:`remove_stale_temporaries`) from a file
another live job is still writing.

Any ``OSError`` while writing (disk full, quota, read-only folder) becomes one
:class:`~flatprep.exceptions.OutputWriteError` naming the target file.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .exceptions import FlatprepError, OutputWriteError

#: A temporary left by a process dead for this long (by its last change) is debris, whatever host wrote it.
STALE_SECONDS = 3600
_TEMPORARY = re.compile(r"^\.(?P<target>.+?)\.(?:(?P<pid>\d+)-(?P<host>[A-Za-z0-9-]*)\.)?[a-z0-9_]{8}(?:\.tmp|\.\w+)$")


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    # mkstemp creates files readable by the owner only; give them the mode a plain open() would.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-{_host()}.", suffix=suffix)
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        # Errors of the write itself (no file named, or the temporary) name the target; others pass as they are.
        if isinstance(err, OSError) and not isinstance(err, FlatprepError) and err.filename in (None, tmp):
            raise write_error(path, err) from err
        raise


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (then they are delivered), so a stop never lands
    inside it: a set of renames, or an optimiser step, is done whole or not at all."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_error(path: str | os.PathLike, err: OSError) -> OutputWriteError:
    """One line naming the file that could not be written and why (e.g. the disk is full)."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "; free some space and rerun"
    else:  # numpy reports a short write without an errno
        hint = "" if err.errno else "; the disk may be full"
    return OutputWriteError(f"{path}: cannot write ({reason}){hint}")


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])[:32]


def temporary_files(root: str | os.PathLike, *, skip: tuple[str, ...] = ()) -> list[Path]:
    """Temporary files of atomic writes under ``root`` (left by a killed run, or still being written).

    Folders named in ``skip`` (e.g. a Nipype work folder) are not searched.
    """
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in skip]
        found += [Path(folder) / n for n in names if n.startswith(".") and _TEMPORARY.match(n)]
    return sorted(found)


def _is_stale(path: Path) -> bool:
    match = _TEMPORARY.match(path.name)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if match["pid"] and match["host"] == _host():
        if int(match["pid"]) == os.getpid():
            return True  # a container restarted with the same pid: called before this process writes
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            return True  # its writer is gone
        except PermissionError:
            pass  # alive, another user's
        else:
            return False
    return age > STALE_SECONDS


def remove_stale_temporaries(root: str | os.PathLike, *, skip: tuple[str, ...] = ()) -> list[Path]:
    """Remove temporary files under ``root`` whose writer died; return them.

    A temporary is stale when the process named in it no longer runs on this
    host, or (written elsewhere, or by an older flatprep) when it has not
    changed for :data:`STALE_SECONDS`. Files a live job is writing are kept.
    Folders named in ``skip`` (e.g. a Nipype work folder) are not searched.
    Call it before this process writes anything under ``root``.
    """
    removed = []
    for path in temporary_files(root, skip=skip):
        if not _is_stale(path):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))
