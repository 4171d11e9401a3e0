"""Per-participant HTML reports: figures and a summary table for each run."""

from __future__ import annotations

import html
import os
from pathlib import Path

from flatprep import __version__
from flatprep.atomic import write_text


_STYLE = """
body { font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #aaa; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #eee; text-align: left; } img { max-width: 100%; margin: 0.5em 0; }
.failed { color: #b00; font-weight: bold; } figcaption { font-size: 0.85em; color: #555; }
"""


def write_participant_report(path: str | os.PathLike, *, subject: str, runs: list[dict]) -> Path:
    """Write ``sub-X.html``.

    Parameters
    ----------
    path : path
        Output HTML (written atomically).
    subject : str
    runs : list of dict
        Each with ``label``, ``summary`` (dict of name -> value), ``figures``
        (list of (caption, path relative to the report)) and optionally ``error``.
    """
    path = Path(path)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sub-{html.escape(subject)}</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>flatprep report: sub-{html.escape(subject)}</h1>",
             f"<p>flatprep {__version__}; {len(runs)} run(s).</p>",
             "<h2>Summary</h2>", _summary_table(runs)]
    for run in runs:
        parts.append(f"<h2 id='{html.escape(run['label'])}'>{html.escape(run['label'])}</h2>")
        if run.get("error"):
            parts.append(f"<p class='failed'>failed: {html.escape(run['error'])}</p>")
        for caption, figure in run.get("figures", []):
            parts.append(f"<figure><img src='{html.escape(str(figure))}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
    return path


def _summary_table(runs: list[dict]) -> str:
    keys = list(dict.fromkeys(k for run in runs for k in run.get("summary", {})))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["run", *keys])
    rows = []
    for run in runs:
        cells = [f"<a href='#{html.escape(run['label'])}'>{html.escape(run['label'])}</a>"]
        values = [run.get("summary", {}).get(k) for k in keys]
        cells += [html.escape("n/a" if v in (None, "") else str(v)) for v in values]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
