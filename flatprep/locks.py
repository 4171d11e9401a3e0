"""Advisory file locks shared by processes that write into one folder.

Jobs started separately (one per participant on a cluster) can share an
output folder: each holds a lock while it works on a run, and while it
updates a shared table. Locks are ``fcntl.flock`` locks on small lock files,
released by the kernel when the holder exits or is killed, so a crashed job
never leaves a folder locked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .exceptions import LockError


@contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Parameters
    ----------
    path : path
        The lock file. It stays after release: removing it could let two
        holders lock two different files of one name.
    wait : bool, default=True
        Wait for another holder to release it; with ``False``, raise instead.

    Raises
    ------
    LockError
        With ``wait=False``, when another process holds the lock; or when the
        lock file cannot be created.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise LockError(f"{path}: cannot create the lock file ({err.strerror})") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockError(f"{path}: held by another process") from None
        yield path
    finally:
        os.close(fd)  # closing releases the lock


def is_locked(path: str | os.PathLike) -> bool:
    """True when another process holds the lock on ``path`` right now."""
    if not Path(path).exists():
        return False
    try:
        with file_lock(path, wait=False):
            return False
    except LockError:
        return True


def group_lock_path(output_dir: str | os.PathLike) -> Path:
    """The lock that one group level holds on an output folder while it writes shards and the manifest."""
    return Path(output_dir) / ".locks" / "group.lock"


@contextmanager
def group_lock(output_dir: str | os.PathLike, *, wait: bool = False) -> Iterator[Path]:
    """Hold the output folder's group-level lock for the ``with`` block.

    Raises
    ------
    LockError
        With ``wait=False``, one line when another group level holds it.
    """
    path = group_lock_path(output_dir)
    if not wait and is_locked(path):
        raise LockError(f"{output_dir}: another group level is writing its shards (lock {path} is held); "
                        "wait for it to finish, or rerun with --wait")
    with file_lock(path, wait=wait) as held:
        yield held
