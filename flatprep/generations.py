"""Shard sets that never change once published: new content gets new file names.

A shard file name stands for one content (its runs, their checksums, the
packing options: :func:`flatprep.shards.shard_key`). A regroup keeps the name
of every shard whose content the published manifest already lists, and gives
each new content the next unused index (one above every index the published
manifest lists or retires), so no file that a reader of the published
manifest may open is ever replaced by other bytes. The manifest is switched
only after every new shard is written.

Retention rule: after a regroup, the shards of the previous manifest that the
new one no longer lists are *retired*: listed as such in manifest.json and
kept, so a trainer that started on the previous set reads it to its end. They
are removed by the next regroup (any shard file listed by neither the new
manifest nor as retired is removed once the new manifest is written).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .exceptions import ShardFormatError
from .h5 import open_h5

_INDEX = re.compile(r"^shard-(\d+)_")


def shard_index(name: str) -> int | None:
    """The index in a shard file name (``shard-00012_flatclips.h5`` -> 12), None for other names."""
    match = _INDEX.match(name)
    return int(match.group(1)) if match else None


def published(shard_dir: str | Path) -> dict:
    """The published manifest.json as a dict (empty when there is none or it cannot be read)."""
    try:
        return json.loads((Path(shard_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _content_key(path: Path) -> str | None:
    try:
        with open_h5(path, error=ShardFormatError) as handle:
            key = handle.attrs.get("content_key")
    except (ShardFormatError, OSError):
        return None
    return key.decode() if isinstance(key, bytes) else key


def published_keys(shard_dir: str | Path, description: dict) -> dict[str, str]:
    """content key -> file name of every shard the published manifest lists.

    Manifests record each shard's ``content_key``; for older ones it is read
    from the shard file itself.
    """
    shard_dir = Path(shard_dir)
    keys = {}
    for entry in description.get("shards", []):
        key = entry.get("content_key") or _content_key(shard_dir / entry["file"])
        if key:
            keys[key] = entry["file"]
    return keys


def allocate_names(keys: list[str], description: dict, known: dict[str, str], name_of) -> list[str]:
    """File names for the planned shards, in plan order.

    Parameters
    ----------
    keys : list of str
        Content key of each planned shard.
    description : dict
        The published manifest.json (``{}`` for none).
    known : dict
        content key -> file name of the published shards (:func:`published_keys`).
    name_of : callable
        index -> file name (:func:`flatprep.shards.shard_name`).

    Returns
    -------
    list of str
        A published shard's name for a content it already holds, else the next
        index above every one the manifest lists or retires (deterministic:
        a rerun after a killed regroup picks the same names).
    """
    used = [shard_index(e["file"]) for e in [*description.get("shards", []), *description.get("retired_shards", [])]]
    next_index = max([i for i in used if i is not None], default=-1) + 1
    names = []
    for key in keys:
        if key in known:
            names.append(known[key])
        else:
            names.append(name_of(next_index))
            next_index += 1
    return names


def retired_entries(previous: dict, listed_now: set[str]) -> list[dict]:
    """Shards of the previous manifest that the new one does not list: ``{"file", "sha256"}`` each."""
    return [{"file": e["file"], "sha256": e.get("sha256")} for e in previous.get("shards", [])
            if e["file"] not in listed_now]


def remove_unlisted(shard_dir: str | Path, keep: set[str], pattern: str = "shard-*_flatclips.h5") -> list[Path]:
    """Remove shard files named by neither the new manifest nor its retired list; returns them."""
    removed = []
    for path in sorted(Path(shard_dir).glob(pattern)):
        if path.name not in keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
