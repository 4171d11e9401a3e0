"""The group page, ``group.html``: the dataset as a whole, bounded in size and drawing time.

Pictures describe all packed runs at once instead of one panel per run:

* the mean across runs of each run's temporal mean map, and their spread (std across runs);
* the mean across runs of each run's tSNR map;
* the runs whose mean map is furthest from the group's (distance = 1 - Pearson r between the
  run's mean map and the mean across runs, over the valid pixels), a few small maps linked to
  their subject reports.

Both come from two passes over the per-run files, one run's maps in memory at a
time, so drawing time is linear in the runs and memory does not depend on them.
A table lists every run (packed, failed at the participant level, or left out),
sortable and searchable by a small inline script; with 10^4 runs it is about
2 MB of HTML. Failed and missing runs come from ``runs.tsv``.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flatprep import __version__
from flatprep.atomic import write_text
from flatprep.shards import SPLITS

logger = logging.getLogger(__name__)

#: How many of the runs furthest from the group mean map the page draws.
N_OUTLIERS = 6
#: Group-level pictures; any other ``figures/group*`` file is from an earlier version and is removed.
_PICTURES = ("group_desc-mean_flatmap.png", "group_desc-spread_flatmap.png", "group_desc-tsnr_flatmap.png")


@dataclass
class RunOutcomes:
    """What the group level did not pack, from ``runs.tsv`` and the collected files.

    Attributes
    ----------
    failed : list of (run, subject, reason)
        Runs whose participant level failed.
    missing : list of (run, subject, reason)
        Runs that ``runs.tsv`` says are done but that were not packed.
    refused : list of str
        Per-run files left out by the group level, one line each (the reason in it).
    absent_subjects : list of str
        Subjects in ``runs.tsv`` with no packed run (so in no split).
    warnings : list of str
        Empty splits that were asked for.
    report_ids : dict
        per-run file (relative path) -> the run's name in ``runs.tsv``, its anchor in the subject report.
    mean_fd : dict
        run name in ``runs.tsv`` -> mean framewise displacement, where ``runs.tsv`` records one (column ``mean_fd``).
    """

    failed: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    refused: list = field(default_factory=list)
    absent_subjects: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    report_ids: dict = field(default_factory=dict)
    mean_fd: dict = field(default_factory=dict)


def run_outcomes(output_dir, rows: list[dict], problems: list[str], split_ratios) -> RunOutcomes:
    """Compare ``runs.tsv`` with the packed manifest ``rows``: failed, missing and absent; empty splits.

    ``problems`` are the group level's lines for files it left out; a run whose
    file is named in one of them is reported with that line as its reason.
    """
    from flatprep.tables import read_tsv

    table = Path(output_dir) / "runs.tsv"
    recorded = read_tsv(table) if table.exists() else []
    packed = {row["source"] for row in rows}
    # Each problem line starts with the file it is about: found by file name, not by a search of every line.
    problem_of = {}
    for line in problems:
        problem_of.setdefault(Path(line.split(": ", 1)[0]).name, line)
    outcomes = RunOutcomes(refused=list(problems))
    for row in recorded:
        label, subject, source = row["run"], row.get("subject") or "", row.get("out_file") or ""
        outcomes.report_ids[source or label] = label
        if row.get("mean_fd") not in (None, ""):
            outcomes.mean_fd[label] = row["mean_fd"]
        if source in packed and row.get("status") != "failed":
            continue
        if row.get("status") == "failed":
            outcomes.failed.append((label, subject, row.get("error") or "failed (no reason recorded)"))
        else:
            reason = problem_of.get(Path(source).name, "its per-run file was not found or not complete")
            outcomes.missing.append((label, subject, reason))
    subjects = {row["subject"] for row in rows}
    outcomes.absent_subjects = sorted({row.get("subject") or "" for row in recorded} - subjects - {""})
    counts = {split: sum(row["split"] == split for row in rows) for split in SPLITS}
    for split, ratio in zip(SPLITS, split_ratios):
        if ratio > 0 and counts[split] == 0:
            outcomes.warnings.append(f"split {split!r} is empty although --split-ratios gives it {ratio:g} "
                                     f"({len(subjects)} subject(s) packed in all)")
    return outcomes


# --------------------------------------------------------------------------- streaming summaries


def _run_maps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A per-run file's temporal mean and std, each (n_pixels,) float64."""
    from flatprep.h5 import open_h5

    with open_h5(path) as handle:
        return handle["mean"][()].astype(np.float64), handle["std"][()].astype(np.float64)


def _standardised(values: np.ndarray) -> np.ndarray:
    """(n_pixels,) -> zero mean, unit norm (all zeros when constant): a dot product of two is Pearson r."""
    centred = values - values.mean()
    norm = np.linalg.norm(centred)
    return centred / norm if norm > 0 else centred


@dataclass
class GroupMaps:
    """Maps across runs and one QC line per run.

    Attributes
    ----------
    mean, spread, tsnr : ndarray, shape (n_pixels,)
        Mean and std across runs of the runs' temporal mean maps; mean of their tSNR maps.
    per_run : dict
        run label -> {"tsnr": median tSNR over pixels with signal, "distance": 1 - r to ``mean``}.
    """

    mean: np.ndarray
    spread: np.ndarray
    tsnr: np.ndarray
    per_run: dict


def summarise_runs(output_dir, rows: list[dict]) -> GroupMaps:
    """Stream over the packed runs twice (one run's maps held at a time) to build :class:`GroupMaps`.

    The first pass sums the mean maps, their squares and the tSNR maps in
    float64 in manifest order (the same sums for any thread count); the second
    correlates each run's mean map with the mean across runs.
    """
    from flatprep.clean import temporal_snr
    from flatprep.qc import run_quality

    output_dir = Path(output_dir)
    total = squares = tsnr_total = None
    per_run = {}
    for row in rows:
        mean, std = _run_maps(output_dir / row["source"])
        if total is None:
            total, squares, tsnr_total = np.zeros_like(mean), np.zeros_like(mean), np.zeros_like(mean)
        total += mean
        squares += mean * mean
        tsnr_total += temporal_snr(mean, std)
        per_run[row["run"]] = {"tsnr": run_quality(mean, std)["tsnr_median"]}
    n = max(len(rows), 1)
    group_mean = total / n
    spread = np.sqrt(np.maximum(squares / n - group_mean**2, 0.0))
    reference = _standardised(group_mean)
    for row in rows:
        mean, _ = _run_maps(output_dir / row["source"])
        per_run[row["run"]]["distance"] = round(float(1.0 - _standardised(mean) @ reference), 4)
    return GroupMaps(group_mean, spread, tsnr_total / n, per_run)


# --------------------------------------------------------------------------- pictures


def _draw_pictures(output_dir: Path, grid, maps: GroupMaps, rows: list[dict]) -> tuple[list, list]:
    """Write the group pictures; return (caption, path) of the dataset maps and the outliers' entries.

    Each outlier entry is (row, caption, path); the paths are relative to ``output_dir``.
    """
    from flatprep.qc import save_flatmap_png
    from flatprep.render import read_png_text

    figures = output_dir / "figures"
    n = len(rows)
    drawn = []
    for name, values, title, cmap, unit in (
            (_PICTURES[0], maps.mean, f"mean across {n} runs of each run's temporal mean", "gray", "signal"),
            (_PICTURES[1], maps.spread, f"spread (std) across {n} runs of each run's temporal mean", "magma",
             "signal"),
            (_PICTURES[2], maps.tsnr, f"mean across {n} runs of each run's tSNR", "viridis", "tSNR")):
        path = save_flatmap_png(grid, values, figures / name, title=title, cmap=cmap, colorbar_label=unit,
                                vmin=0 if cmap != "gray" else None)
        drawn.append((f"{title}; {read_png_text(path)['Description']}", path.relative_to(output_dir).as_posix()))
    furthest = sorted(rows, key=lambda r: (-maps.per_run[r["run"]]["distance"], r["run"]))[:N_OUTLIERS]
    outliers = []
    for rank, row in enumerate(furthest, 1):
        mean, _ = _run_maps(output_dir / row["source"])
        path = save_flatmap_png(grid, mean, figures / f"group_outlier-{rank}_flatmap.png", cmap="gray",
                                title=f"{row['run']}: temporal mean", colorbar_label="signal")
        caption = f"1 - r = {maps.per_run[row['run']]['distance']:.4f}; {read_png_text(path)['Description']}"
        outliers.append((row, caption, path.relative_to(output_dir).as_posix()))
    keep = {Path(p).name for _, p in drawn} | {Path(p).name for _, _, p in outliers}
    for stale in figures.glob("group*"):
        if stale.name not in keep and not stale.name.startswith("."):
            stale.unlink()
    return drawn, outliers


# --------------------------------------------------------------------------- the page

#: Sorts the run table by a clicked header (numbers as numbers) and filters it by the search box.
_SCRIPT = """
(function () {
  var table = document.getElementById('runs'), body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  function key(row, i) { var t = row.cells[i].textContent, v = parseFloat(t); return isNaN(v) ? t : v; }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    th.addEventListener('click', function () {
      var dir = th.getAttribute('data-dir') === 'up' ? -1 : 1;
      th.setAttribute('data-dir', dir === 1 ? 'up' : 'down');
      rows.sort(function (a, b) {
        var x = key(a, i), y = key(b, i);
        if (typeof x !== typeof y) { return dir * (typeof x === 'number' ? -1 : 1); }
        return dir * (x < y ? -1 : x > y ? 1 : 0);
      });
      var fragment = document.createDocumentFragment();
      rows.forEach(function (row) { fragment.appendChild(row); });
      body.appendChild(fragment);
    });
  });
  var search = document.getElementById('search');
  search.addEventListener('input', function () {
    var query = search.value.toLowerCase(), shown = 0;
    rows.forEach(function (row) {
      var hit = row.textContent.toLowerCase().indexOf(query) >= 0;
      row.style.display = hit ? '' : 'none'; shown += hit;
    });
    document.getElementById('shown').textContent = shown;
  });
})();
"""
_GROUP_STYLE = """
th { cursor: pointer; } th[data-dir=up]::after { content: " \\25B2"; } th[data-dir=down]::after { content: " \\25BC"; }
.warning { color: #8a5300; font-weight: bold; } .maps { display: flex; flex-wrap: wrap; gap: 1em; }
.maps figure { flex: 1 1 300px; margin: 0; } #search { font-size: 1em; padding: 2px 6px; }
body { font-size: 15px; } figcaption, table { font-size: 13px; }
"""


def _esc(value) -> str:
    return html.escape("n/a" if value in (None, "") else str(value))


def _report_link(output_dir: Path, subject: str, label: str, reports: dict, anchor: str | None = None) -> str:
    """``label`` linked to ``anchor`` (default: ``label``) in ``sub-<subject>.html`` when that report exists
    (checked once per subject)."""
    if subject not in reports:
        reports[subject] = (output_dir / f"sub-{subject}.html").is_file()
    text = html.escape(label)
    target = html.escape(anchor or label)
    return f"<a href='sub-{html.escape(subject)}.html#{target}'>{text}</a>" if reports[subject] else text


def _run_table(output_dir: Path, rows: list[dict], maps: GroupMaps, outcomes: RunOutcomes) -> str:
    """Every run, one compact row each (closing tags omitted, as HTML allows): packed, failed, missing."""
    reports: dict = {}
    head = ("<thead><tr><th>run</th><th>subject</th><th>split</th><th>frames</th><th>tSNR</th><th>mean FD</th>"
            "<th>1 - r</th><th>status</th></tr></thead>")
    lines = []
    for row in rows:
        qc = maps.per_run[row["run"]]
        recorded = outcomes.report_ids.get(row["source"])
        link = _report_link(output_dir, row["subject"], row["run"], reports, recorded)
        lines.append(f"<tr><td>{link}<td>{_esc(row['subject'])}<td>{row['split']}<td>{row['frames']}<td>{qc['tsnr']}"
                     f"<td>{_esc(outcomes.mean_fd.get(recorded))}<td>{qc['distance']}<td>packed")
    for status, entries in (("failed", outcomes.failed), ("missing", outcomes.missing)):
        for label, subject, reason in entries:
            lines.append(f"<tr class='failed'><td>{_report_link(output_dir, subject, label, reports)}"
                         f"<td>{_esc(subject)}<td>none<td>n/a<td>n/a<td>{_esc(outcomes.mean_fd.get(label))}<td>n/a"
                         f"<td>{status}: {_esc(reason)}")
    return f"<table id='runs'>{head}<tbody>\n" + "\n".join(lines) + "\n</tbody></table>"


def _left_out(outcomes: RunOutcomes) -> str:
    """Failed, missing and refused runs with their reasons, and subjects in no split."""
    items = [f"<li><b>{_esc(label)}</b> failed at the participant level: {_esc(reason)}</li>"
             for label, _, reason in outcomes.failed]
    items += [f"<li><b>{_esc(label)}</b> done at the participant level but not packed: {_esc(reason)}</li>"
              for label, _, reason in outcomes.missing]
    named = {reason for _, _, reason in outcomes.missing}
    items += [f"<li>{_esc(line)}</li>" for line in outcomes.refused if line not in named]
    text = (f"<p>{len(outcomes.failed)} run(s) failed at the participant level, {len(outcomes.missing)} done but "
            f"not packed, {len(outcomes.refused)} per-run file(s) left out by the group level.</p>")
    text += f"<ul>{''.join(items)}</ul>" if items else "<p>No run was left out.</p>"
    if outcomes.absent_subjects:
        text += (f"<p class='warning'>Subjects in no split (no packed run): "
                 f"{', '.join(_esc(s) for s in outcomes.absent_subjects)}.</p>")
    return text


def _splits_table(summary: dict, split_ratios) -> str:
    total = sum(v["subjects"] for v in summary.values()) or 1
    body = "".join(f"<tr><td>{s}</td><td>{ratio:g}</td><td>{v['subjects']} ({v['subjects'] / total:.0%})</td>"
                   f"<td>{v['runs']}</td><td>{v['frames']}</td><td>{v['hours']}</td></tr>"
                   for (s, v), ratio in zip(summary.items(), split_ratios))
    return ("<table><tr><th>split</th><th>requested</th><th>subjects</th><th>runs</th><th>frames</th>"
            f"<th>hours</th></tr>{body}</table>")


def write_group_report(output_dir, rows: list[dict], summary: dict, grid_attrs: dict, outcomes: RunOutcomes,
                       split_ratios) -> Path:
    """Write ``group.html`` and its pictures (``figures/group_*.png``); return the page's path.

    Parameters
    ----------
    rows : list of dict
        Manifest rows of the packed runs (``run``, ``subject``, ``split``, ``frames``, ``source``, ``shard``).
    summary : dict
        :func:`flatprep.shards.summary_by_split`.
    grid_attrs : dict
        The runs' common grid description.
    outcomes : RunOutcomes
        :func:`run_outcomes`.
    split_ratios : (train, val, test)
        The requested fractions.
    """
    from flatprep.flatmap import grid_from_description

    from .report import REPORT_CSS

    output_dir = Path(output_dir)
    grid = grid_from_description(grid_attrs)
    maps = summarise_runs(output_dir, rows)
    drawn, outliers = _draw_pictures(output_dir, grid, maps, rows)
    figures = "".join(f"<figure><img src='{p}' alt='{_esc(c)}' loading='lazy'><figcaption>{_esc(c)}</figcaption>"
                      "</figure>" for c, p in drawn)
    furthest = "".join(f"<figure><img src='{p}' alt='{_esc(c)}' loading='lazy'><figcaption>"
                       f"{_report_link(output_dir, row['subject'], row['run'], {}, outcomes.report_ids.get(row['source']))}"
                       f" ({row['split']}): {_esc(c)}"
                       "</figcaption></figure>" for row, c, p in outliers)
    warnings = "".join(f"<p class='warning'>Warning: {_esc(w)}</p>" for w in outcomes.warnings)
    n_shards = len({r["shard"] for r in rows})
    text = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>flatprep group level</title>"
            f"<style>{REPORT_CSS}{_GROUP_STYLE}</style></head><body><h1>flatprep group level</h1>"
            f"<p>flatprep {__version__}; {len(rows)} runs of {len({r['subject'] for r in rows})} subjects packed in "
            f"{n_shards} shard(s); grid {grid.shape[0]} x {grid.shape[1]} at {grid.pixel_size} mm.</p>{warnings}"
            f"<h2>Splits (by subject)</h2>{_splits_table(summary, split_ratios)}"
            f"<h2>Runs left out</h2>{_left_out(outcomes)}"
            f"<h2>The dataset as a whole</h2><div class='maps'>{figures}</div>"
            f"<h2>Runs furthest from the group</h2><p>The {len(outliers)} runs whose temporal mean map correlates "
            "least with the mean across runs (distance 1 - r, Pearson r over the valid pixels; the table below "
            f"sorts every run by it).</p><div class='maps'>{furthest}</div>"
            f"<h2>Every run</h2><p>Click a column to sort; <input id='search' type='search' "
            f"placeholder='filter rows' aria-label='filter rows'> showing <span id='shown'>"
            f"{len(rows) + len(outcomes.failed) + len(outcomes.missing)}</span> rows. tSNR: median over pixels with "
            "signal; mean FD from runs.tsv where recorded.</p>"
            f"{_run_table(output_dir, rows, maps, outcomes)}<script>{_SCRIPT}</script></body></html>")
    return write_text(output_dir / "group.html", text)
