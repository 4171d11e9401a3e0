"""BIDS-style TSV tables: one writer and one reader for every table flatprep makes or reads.

``n/a`` stands for a missing value both ways (BIDS's convention); writes are
atomic. Used for runs.tsv, manifest.tsv, probe tables, embeddings tables,
the sample generator's tables and participants.tsv.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .atomic import write_text
from .exceptions import InputError

MISSING = "n/a"


#: Line breaks other than tab and newline (which :func:`tsv_text` refuses): carriage return, vertical tab,
#: form feed, file/group/record separators, next line, line and paragraph separators. Readers split rows on them.
_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def format_cell(value, *, digits: int = 8) -> str:
    """A value as TSV text: ``n/a`` for None/NaN/"", floats to ``digits`` significant digits.

    Line breaks other than a newline (``\\r``, ...) are written as escapes (``\\r``),
    so that a name holding one cannot split a row.
    """
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) or value == "":
        return MISSING
    if isinstance(value, (list, tuple, np.ndarray)):
        return ",".join(format_cell(v, digits=digits) for v in value)
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return _LINE_BREAKS.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), str(value))


def tsv_text(rows: Iterable[Mapping], columns: Sequence[str], *,
             fmt: Callable[[object], str] = format_cell) -> str:
    """The TSV text of ``rows`` (dicts; missing keys are ``n/a``) with a header of ``columns``.

    Raises
    ------
    ValueError
        A cell holds a tab or a line break (the table would not read back); :func:`format_cell`
        escapes every line break but the newline.
    """
    lines = ["\t".join(columns)]
    for row in rows:
        cells = [fmt(row.get(column)) for column in columns]
        bad = [c for c in cells if "\t" in c or "\n" in c or _LINE_BREAKS.search(c)]
        if bad:
            raise ValueError(f"TSV cell {bad[0]!r} holds a tab or newline")
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def write_tsv(path: str | os.PathLike, rows: Iterable[Mapping], columns: Sequence[str], *,
              fmt: Callable[[object], str] = format_cell) -> Path:
    """Write ``rows`` as a TSV with ``columns`` atomically; returns the path.

    Raises
    ------
    ValueError
        Naming ``path``: a cell holds a tab or a newline (nothing is written).
    """
    try:
        text = tsv_text(rows, columns, fmt=fmt)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return write_text(path, text)


#: Largest table read (bytes): fMRIPrep's confounds of a long run are tens of MB.
MAX_TABLE_BYTES = 512 * 2**20


def read_text(path: Path, what: str, *, error: type[Exception] = InputError) -> str:
    """The UTF-8 text of a table file.

    Raises
    ------
    error
        Naming the file and ``what``: missing, unreadable, not UTF-8, or over :data:`MAX_TABLE_BYTES`.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_TABLE_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as err:
        raise error(f"{path}: cannot read {what} ({err.strerror or err})") from err
    if len(raw) > MAX_TABLE_BYTES:
        raise error(f"{path}: {what} is over {MAX_TABLE_BYTES // 2**20} MiB, more than any table flatprep reads")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: cannot read {what} ({err})") from err


def read_tsv(path: str | os.PathLike, *, required: Sequence[str] = (),
             error: type[Exception] = InputError) -> list[dict[str, str | None]]:
    """Rows of a TSV as dicts of strings (``n/a`` as None).

    Raises
    ------
    error
        The file is missing, unreadable, too large (:func:`read_text`), holds a
        cell over the csv module's field limit, or lacks a ``required`` column.
    """
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: cannot read the table (no such file)")
    reader = csv.DictReader(io.StringIO(read_text(path, "the table", error=error)), delimiter="\t")
    try:
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise error(f"{path}: missing columns {missing} (columns: {', '.join(reader.fieldnames or [])})")
        return [{k: (None if v == MISSING else v) for k, v in row.items()} for row in reader]
    except csv.Error as err:
        raise error(f"{path}: not a readable TSV table ({err})") from None


def read_participants(path: str | os.PathLike, *, error: type[Exception] = InputError) -> dict[str, dict]:
    """participants.tsv as subject label (without ``sub-``) -> row."""
    rows = read_tsv(path, required=("participant_id",), error=error)
    return {row["participant_id"].removeprefix("sub-"): row for row in rows}
