"""Atomic file writes: write to a temporary name beside the target, then rename.

A reader (or a rerun after a crash) sees either the old file or the complete
new one, never a partial file. Temporary names start with ``.`` and end in
``.tmp`` (or the target's suffix, for writers that infer the format from it).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))
