"""On-disk cache of derived arrays (grids, operators, masks).

Entries are ``.npz`` files (no pickle) named by a SHA-256 key of everything
they depend on: file contents, parameters and a format version. The cache
lives in ``$FLATPREP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/flatprep`` or
``~/.cache/flatprep``. Writes are atomic (temporary file, then ``os.replace``),
so a killed process never leaves a half-written entry behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .atomic import atomic_path

logger = logging.getLogger(__name__)

#: Bump when the meaning of a cached array changes; old entries are ignored.
CACHE_FORMAT = 1


def cache_dir() -> Path:
    """The cache directory (created on first write, not here)."""
    if os.environ.get("FLATPREP_CACHE_DIR"):
        return Path(os.environ["FLATPREP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "flatprep"


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (memoised on path, size and mtime)."""
    stat = os.stat(path)
    return _file_digest(os.fspath(path), stat.st_size, stat.st_mtime_ns)


def array_digest(*arrays: np.ndarray) -> str:
    """SHA-256 over the dtype, shape and bytes of arrays."""
    sha = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def make_key(**parts) -> str:
    """A cache key: SHA-256 of the parts as canonical JSON."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(kind: str, key: str) -> Path:
    """Where the entry ``kind``/``key`` lives."""
    return cache_dir() / kind / f"{key[:32]}.npz"


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """Read an entry; None if it is missing or unreadable (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        logger.warning("ignoring unreadable cache entry %s (%s); rebuilding it", path, err)
        return None


def cached_arrays(
    kind: str, key: str, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Return the cached arrays for ``key``, building and storing them on a miss."""
    path = cache_path(kind, key)
    arrays = load_arrays(path)
    if arrays is not None:
        logger.debug("cache hit %s", path)
        return arrays
    logger.debug("cache miss %s", path)
    arrays = build()
    try:
        save_arrays(path, arrays)
    except OSError as err:  # a read-only cache must not stop the computation
        logger.warning("could not write cache entry %s: %s", path, err)
    return arrays
