"""pybids entity configs whose patterns read a file's name only, never the folders above the dataset.

pybids (0.22) matches its entity patterns anywhere in a file's absolute path,
and several derivative patterns (``desc-``, ``den-``, ``res-``, ``label-``, ...)
are not even anchored to a ``_`` or ``/`` (pybids issue #595). A dataset under a
folder such as ``acq-pilot/`` or ``golden-data/`` would then carry ``acq-pilot``
or ``den-data`` in every entity set. Every key-label pair of a BIDS name is
in the file name itself (``sub-``/``ses-`` folders repeat it), so the patterns
here are pybids' own, with the match required to lie in the last path component.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

#: A key-label pattern of pybids' configs: prefix, key, the label group, any tail (``.*xfm``).
_PAIR = re.compile(r"^(?P<prefix>.*?)(?P<key>[a-zA-Z]+)-(?P<group>\([^()]*\))(?P<tail>.*)$")
_NAME_ONLY = r"(?=[^/\\]*$)"  # nothing after the match is a folder separator
_NOT_SEPARATOR = r"[^/\\]"


def anchored_pattern(pattern: str) -> str:
    r"""``pattern`` with its match confined to the file name.

    >>> print(anchored_pattern("desc-([a-zA-Z0-9+]+)"))
    (?:^|[_/\\])desc-([a-zA-Z0-9+]+)(?=[^/\\]*$)
    """
    if pattern.endswith("$"):  # suffix, extension, scans: already the end of the name
        return pattern
    pair = _PAIR.match(pattern)
    if pair is None:  # datatype folder, fieldmap suffixes: the part right before the file name
        return pattern + _NAME_ONLY
    tail = pair["tail"].replace(".*", _NOT_SEPARATOR + "*")
    return rf"(?:^|[_/\\]){pair['key']}-{pair['group']}(?={tail}{_NOT_SEPARATOR}*$)"


@lru_cache(maxsize=None)
def _anchored(name: str) -> str:
    from bids import layout

    config = json.loads((Path(layout.__file__).parent / "config" / f"{name}.json").read_text(encoding="utf-8"))
    for entity in config["entities"]:
        if "pattern" in entity:
            entity["pattern"] = anchored_pattern(entity["pattern"])
    return json.dumps(config)


def anchored_configs(*, derivative: bool) -> list[dict]:
    """pybids' ``bids`` (and, for a derivative dataset, ``derivatives``) configs, anchored to file names.

    Pass as ``BIDSLayout(..., config=...)``; the configs keep pybids' names, so
    layout behaviour that depends on them (extension filters) is unchanged.
    """
    names = ("bids", "derivatives") if derivative else ("bids",)
    return [json.loads(_anchored(name)) for name in names]
