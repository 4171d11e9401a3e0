"""Access to the data files in ``bids_specs/`` (installed as flatprep.bids_specs)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

# In a source checkout (editable install) the data folder sits beside the package.
_CHECKOUT_SPECS = Path(__file__).resolve().parent.parent / "bids_specs"


def spec_text(name: str) -> str:
    """Text of a file in flatprep.bids_specs, e.g. ``"flatprep.json"``."""
    try:
        return resources.files("flatprep.bids_specs").joinpath(name).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        return (_CHECKOUT_SPECS / name).read_text(encoding="utf-8")


def load_spec(name: str) -> dict:
    """A JSON file of flatprep.bids_specs, parsed."""
    return json.loads(spec_text(name))
