"""Reruns that never lose a complete output.

A run is written into its own staging folder (``OUTPUT_DIR/.incoming/<run>/``,
the same derivative layout) and its files are moved over the old ones only
once all of them are written and verified: figures and sidecar first, the
``.h5`` last (its presence with the run's inputs key means complete). A run
that fails or is interrupted leaves the earlier files as they were.

What the earlier output was made with is read back from its run file, so a
rerun can say what changed ("pixel size 1.2 → 2.4 mm"). Outputs on different
grids (pixel size, template) never replace each other silently: that takes
``--force``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from flatprep.atomic import signals_held

logger = logging.getLogger(__name__)

#: Folder of OUTPUT_DIR where runs are written before they are swapped in.
STAGING = ".incoming"

# Clean-request fields and how a change of each reads: (name, unit).
_CLEAN_NAMES = {"confounds_strategy": ("confounds", ""), "target_tr": ("TR", " s"), "detrend": ("detrend", ""),
                "dummy_scans": ("dummy scans", ""), "highpass_hz": ("high-pass", " Hz")}


def staging_dir(output_dir, label: str) -> Path:
    """Where run ``label`` is written before it replaces its outputs in ``output_dir``."""
    return Path(output_dir) / STAGING / label


def remove_staging(output_dir, label: str) -> None:
    """Remove run ``label``'s staging folder, and the staging root once it is empty."""
    shutil.rmtree(staging_dir(output_dir, label), ignore_errors=True)
    try:
        (Path(output_dir) / STAGING).rmdir()
    except OSError:  # other runs are being written, or it is already gone
        pass


def remove_abandoned_staging(output_dir, lock_of) -> list[Path]:
    """Remove staging folders that no job holds the run lock of (left by a killed run); return them.

    ``lock_of(label)`` gives the lock file of a run (:func:`.runner.run_lock_path`).
    """
    from flatprep.locks import is_locked

    root = Path(output_dir) / STAGING
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and not is_locked(lock_of(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def swap_in(staging: Path, output_dir, run_figures: list[Path]) -> list[Path]:
    """Move every file written under ``staging`` to the same place in ``output_dir``; return the targets.

    The ``.h5`` moves last. When the new set has figures, those in
    ``run_figures`` (every figure the run may have) that it lacks are removed:
    they showed the old data (e.g. a motion trace after ``--confounds`` went
    away). A set without figures (``--no-figures``) leaves the old ones.
    """
    output_dir = Path(output_dir)
    files = sorted((p for p in staging.rglob("*") if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: (p.suffix == ".h5", str(p)))
    targets = [output_dir / p.relative_to(staging) for p in files]
    with signals_held():
        for source, target in zip(files, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        for stale in set(run_figures) - set(targets) if any(t.suffix == ".png" for t in targets) else ():
            stale.unlink(missing_ok=True)
    return targets


def earlier_output(out_file: Path, figures: list[Path]) -> tuple[dict | None, str]:
    """The root and grid attributes of the complete, verified run file at ``out_file``, and why not.

    Returns ``(attributes, "")`` for an output complete as
    :func:`.runner.completeness_problems` says, whatever inputs and options
    made it (the content checksum is read in full); ``(None, "")`` when there
    is no run file; ``(None, problem)`` for one that is not complete.
    """
    from flatprep.exceptions import FlatprepError
    from flatprep.h5 import read_run_attrs

    from .runner import completeness_problems

    if not out_file.is_file():
        return None, ""
    try:
        attrs, grid = read_run_attrs(out_file)
        problems = completeness_problems(out_file, attrs.get("inputs_key"), figures)
    except (FlatprepError, OSError) as err:
        problems = [str(err)]
    if problems:
        return None, problems[0]
    return {"attrs": attrs, "grid": grid}, ""


def _value(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def grid_changes(earlier: dict, settings) -> list[str]:
    """How the grid of this request differs from the earlier output's (pixel size, template)."""
    grid = earlier["grid"]
    changes = []
    if grid.get("pixel_size_mm") is not None and float(grid["pixel_size_mm"]) != float(settings.pixel_size):
        changes.append(f"pixel size {_value(float(grid['pixel_size_mm']))} → {_value(float(settings.pixel_size))} mm")
    if grid.get("template") not in (None, settings.template):
        changes.append(f"template {grid['template']} → {settings.template}")
    return changes


def option_changes(earlier: dict, settings, sources: list[dict]) -> list[str]:
    """Every difference between the earlier output and this request that a lab reads: grid, projection,
    cleaning, input files, flatprep version ("pixel size 1.2 → 2.4 mm", "confounds none → motion")."""
    from flatprep import __version__

    attrs, grid = earlier["attrs"], earlier["grid"]
    changes = grid_changes(earlier, settings)
    if grid.get("method") not in (None, settings.method):
        changes.append(f"projection {grid['method']} → {settings.method}")
    request = attrs.get("clean_request") or {}
    for key, new in settings.clean_options.items():
        if key in request and request[key] != new:
            name, unit = _CLEAN_NAMES.get(key, (key.replace("_", " "), ""))
            changes.append(f"{name} {_value(request[key])} → {_value(new)}{unit}")
    old_inputs = {Path(s["path"]).name: s.get("sha256") for s in attrs.get("sources") or []}
    new_inputs = {Path(s["path"]).name: s.get("sha256") for s in sources}
    for name in sorted(set(old_inputs) - set(new_inputs)):
        changes.append(f"input {name} no longer used")
    for name in sorted(set(new_inputs) - set(old_inputs)):
        changes.append(f"input {name} added")
    changes += [f"input {name} changed" for name in sorted(set(old_inputs) & set(new_inputs))
                if old_inputs[name] != new_inputs[name]]
    if attrs.get("flatprep_version") not in (None, __version__):
        changes.append(f"flatprep {attrs['flatprep_version']} → {__version__}")
    return changes


def describe(earlier: dict) -> str:
    """What an earlier output was made with, in one phrase (for the report of a failed rerun)."""
    attrs, grid = earlier["attrs"], earlier["grid"]
    request = attrs.get("clean_request") or {}
    parts = [f"pixel size {_value(float(grid['pixel_size_mm']))} mm" if "pixel_size_mm" in grid else "",
             f"template {grid['template']}" if "template" in grid else "",
             f"confounds {_value(request.get('confounds_strategy'))}" if request else "",
             f"TR {_value(request.get('target_tr'))} s" if request else "",
             # The run's first source is its (first) BOLD file.
             f"input {Path(attrs['sources'][0]['path']).name}" if attrs.get("sources") else ""]
    return ", ".join(p for p in parts if p)
