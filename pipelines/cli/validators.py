"""Argument validators shared by the command lines.

Each takes the parser and the option name (bind them with functools.partial)
and calls ``parser.error`` with the value received, so usage errors exit
with code 2 and one line naming the option and the value.
"""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path


def integer(parser, option: str, value: str, *, minimum: int = 1) -> int:
    """An int >= minimum (1: positive, 0: non-negative)."""
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        parser.error(f"{option} must be {kind} integer, got {value!r}")
    return number


def positive_float(parser, option: str, value: str, *, unit: str = "") -> float:
    """A finite float > 0."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (number > 0 and math.isfinite(number)):
        parser.error(f"{option} must be a positive number{' of ' + unit if unit else ''}, got {value!r}")
    return number


def _existing(parser, option: str, value: str, kind: str) -> Path:
    """``value`` resolved, if it is an existing ``kind`` ("folder" or "file")."""
    path = Path(value).expanduser().resolve()
    if not (path.is_dir() if kind == "folder" else path.is_file()):
        parser.error(f"{option}: {kind} does not exist: {value}")
    return path


def existing_dir(parser, option: str, value: str) -> Path:
    """A folder that exists (resolved)."""
    return _existing(parser, option, value, "folder")


def existing_file(parser, option: str, value: str) -> Path:
    """A file that exists (resolved)."""
    return _existing(parser, option, value, "file")


def add_folder_argument(parser, name: str, help: str) -> None:
    """Add the positional argument ``name``: a folder that must exist (else a usage error naming it)."""
    parser.add_argument(name, type=partial(existing_dir, parser, name), help=help)


def memory_size(parser, option: str, value: str) -> str:
    """A memory size such as ``4GB`` or ``500MiB`` (kept as given: dask-jobqueue reads it)."""
    if re.fullmatch(r"[1-9]\d*(\.\d+)?\s*([kMGT]i?)?B", value):
        return value  # plainly valid: no dask import (~0.2 s) for the default of every run
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(value)
    except (ValueError, TypeError):
        size = 0
    if size <= 0:
        parser.error(f"{option} must be a memory size such as 4GB or 500MiB, got {value!r}")
    return value


def walltime(parser, option: str, value: str) -> str:
    """A SLURM time limit: ``[D-]HH:MM:SS`` or ``MM:SS`` or minutes."""
    if not re.fullmatch(r"(\d+-)?\d+(:\d{2}){0,2}", value):
        parser.error(f"{option} must be a SLURM time such as 01:30:00 or 1-00:00:00, got {value!r}")
    return value
