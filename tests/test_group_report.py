"""The group page: every run listed with its report link, failures from runs.tsv, bounded pictures and memory."""

import re
import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest

from builders import flip_bytes_in_frames
from flatprep.pipelines.cli.run import main
from flatprep.pipelines.group_report import RunOutcomes, summarise_runs, write_group_report
from flatprep.pipelines.runner import RUNS_COLUMNS
from flatprep.shards import read_manifest, summary_by_split
from flatprep.tables import read_tsv, write_tsv


def _table_rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [line for line in body.splitlines() if line.startswith("<tr")]


def test_group_page_lists_every_run_with_its_report_and_pictures(grouped):
    page = (grouped / "group.html").read_text()
    rows, _ = read_manifest(grouped / "shards")
    table = _table_rows(page)
    assert len(table) == len(rows) == 4
    recorded = {row["out_file"]: row["run"] for row in read_tsv(grouped / "runs.tsv")}
    for row in rows:  # linked to the run's section of its subject's report, named as in runs.tsv
        link = f"<a href='sub-{row['subject']}.html#{recorded[row['source']]}'>{row['run']}</a>"
        assert sum(link in line and f"<td>{row['split']}<td>{row['frames']}<td>" in line for line in table) == 1
    for target in set(re.findall(r"href='([^'#]+)[#']", page)):
        assert (grouped / target).is_file(), target
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) == 3 + 4  # three dataset maps, then the 4 runs (fewer than N_OUTLIERS) furthest from them
    assert all((grouped / image).is_file() for image in images)
    assert not (grouped / "figures" / "group_mean_flatmaps.png").exists()
    assert "No run was left out." in page and "<script>" in page and "id='search'" in page
    # The anchor each link points to exists in the subject's report.
    report = (grouped / f"sub-{rows[0]['subject']}.html").read_text()
    assert f"id='{recorded[rows[0]['source']]}'" in report


def test_group_page_says_which_runs_failed_or_are_missing_and_warns_of_an_empty_split(participant_out, sample_bids,
                                                                                       tmp_path, caplog):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    recorded = read_tsv(out / "runs.tsv")
    gone = [row for row in recorded if row["subject"] == "02"]
    for row in gone:  # sub-02's files were deleted: done in runs.tsv, but nothing to pack
        (out / row["out_file"]).unlink()
    corrupt = next(row for row in recorded if row["subject"] == "01")
    flip_bytes_in_frames(out / corrupt["out_file"])  # refused by the group level, with its reason
    failed = dict(recorded[0], run="sub-03_task-rest_space-fsaverage5", subject="03", status="failed",
                  error="sub-03_task-rest_hemi-L_bold.func.gii: 0 frames", out_file=None)
    write_tsv(out / "runs.tsv", [*recorded, failed], RUNS_COLUMNS)
    assert main([str(sample_bids), str(out), "group", "--split-ratios", "0.5", "0.5", "0"]) == 1  # the refused file
    page = (out / "group.html").read_text()
    assert "1 run(s) failed at the participant level, 3 done but not packed" in page
    assert (f"<b>{corrupt['run']}</b> done at the participant level but not packed: {out / corrupt['out_file']}: "
            "content checksum mismatch") in page
    assert "<b>sub-03_task-rest_space-fsaverage5</b> failed at the participant level: " \
           "sub-03_task-rest_hemi-L_bold.func.gii: 0 frames" in page
    for row in gone:
        assert f"<b>{row['run']}</b> done at the participant level but not packed" in page
    assert "Subjects in no split (no packed run): 02, 03." in page
    assert "Warning: split &#x27;val&#x27; is empty although --split-ratios gives it 0.5" in page
    statuses = [line.rsplit("<td>", 1)[1] for line in _table_rows(page)]
    assert sorted(s.split(":")[0] for s in statuses) == ["failed", "missing", "missing", "missing", "packed"]
    assert "split 'val' is empty" in caplog.text and "subjects in no split (no packed run): 02, 03" in caplog.text


def _many_rows(grouped, n_copies: int) -> list[dict]:
    """The grouped manifest's rows repeated under new run labels (the same per-run files)."""
    rows, _ = read_manifest(grouped / "shards")
    return [dict(row, run=f"{row['run']}-copy{i}") for i in range(n_copies) for row in rows]


def _report(grouped, out, rows):
    shutil.rmtree(out, ignore_errors=True)
    (out / "sub-01").mkdir(parents=True)
    for row in rows[:4]:  # the per-run files, linked under the same relative paths
        target = out / row["source"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.hardlink_to(grouped / row["source"])
    _, description = read_manifest(grouped / "shards")
    return write_group_report(out, rows, summary_by_split(rows), description["grid"], RunOutcomes(), (0.5, 0.5, 0))


def test_group_report_size_grows_only_by_its_table_rows(grouped, tmp_path):
    sizes = {}
    for n_copies in (1, 10):
        out = tmp_path / f"copies-{n_copies}"
        page = _report(grouped, out, _many_rows(grouped, n_copies))
        pictures = sorted((out / "figures").glob("group*"))
        sizes[n_copies] = (page.stat().st_size, len(pictures), sum(p.stat().st_size for p in pictures))
        assert len(_table_rows(page.read_text())) == 4 * n_copies
    (page_1, n_1, pictures_1), (page_10, n_10, pictures_10) = sizes[1], sizes[10]
    assert n_1 == 3 + 4 and n_10 == 3 + 6  # the outliers stop at N_OUTLIERS
    assert pictures_10 < pictures_1 * 10 / 7 + 1  # each picture the same size, whatever the number of runs
    assert pictures_10 + page_10 < 5e6
    assert (page_10 - page_1) / 36 < 400  # bytes per extra run: one compact table row


def test_group_maps_hold_one_run_at_a_time(grouped, tmp_path):
    """Peak memory of the streaming summary does not grow with the runs (36 more runs add < one map)."""
    peaks = {}
    for n_copies in (1, 10):
        rows = _many_rows(grouped, n_copies)
        tracemalloc.start()
        maps = summarise_runs(grouped, rows)
        peaks[n_copies] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(maps.per_run) == len(rows)
    one_map = maps.mean.nbytes
    assert peaks[10] - peaks[1] < one_map
    # The copies are the same files: the same distance to the group mean, and the group mean is their mean.
    distances = {row["run"].rsplit("-copy", 1)[0]: set() for row in rows}
    for label, qc in maps.per_run.items():
        distances[label.rsplit("-copy", 1)[0]].add(qc["distance"])
    assert all(len(d) == 1 for d in distances.values())
    assert np.all(maps.spread >= 0) and np.isfinite(maps.tsnr).all()


def test_strict_group_level_fails_on_an_empty_split(participant_out, sample_bids, tmp_path, caplog):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    # Two subjects cannot fill train, val and test: the empty one is a warning, or with --strict an error.
    assert main([str(sample_bids), str(out), "group", "--split-ratios", "0.4", "0.3", "0.3", "--no-figures"]) == 0
    # (which split stays empty is the split rule's business; that one is said is this test's)
    assert re.search(r"split '(train|val|test)' is empty although --split-ratios gives it 0\.[34] "
                     r"\(2 subject\(s\) packed in all\)", caplog.text)
    assert main([str(sample_bids), str(out), "group", "--split-ratios", "0.4", "0.3", "0.3", "--no-figures",
                 "--strict"]) == 1
    assert "--strict: a requested split is empty" in caplog.text


def test_group_page_table_sorts_and_filters_in_a_browser(grouped, tmp_path, chromium):
    """The inline script, run by headless Chromium: a header click sorts numbers as numbers, both ways, and
    the search box hides the rows that do not match."""
    browser = chromium
    probe = """<script>
    window.onerror = function (message) { document.title = 'error ' + message; };
    var table = document.getElementById('runs'), heads = table.tHead.rows[0].cells;
    function first() { return table.tBodies[0].rows[0].cells[4].textContent; }
    heads[4].click(); var up = first(); heads[4].click(); var down = first();
    var search = document.getElementById('search'); search.value = 'sub-02'; search.dispatchEvent(new Event('input'));
    var shown = Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return r.style.display !== 'none'; });
    document.title = ['sorted', up, down, shown.length, document.getElementById('shown').textContent].join(' ');
    </script></body>"""
    page = tmp_path / "group.html"
    page.write_text((grouped / "group.html").read_text().replace("</body>", probe))
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>([^<]*)</title>", done.stdout).group(1)
    rows, _ = read_manifest(grouped / "shards")
    tsnr = sorted((line.split("<td>")[5] for line in _table_rows((grouped / "group.html").read_text())), key=float)
    n_sub02 = sum(row["subject"] == "02" for row in rows)
    assert title == f"sorted {tsnr[0]} {tsnr[-1]} {n_sub02} {n_sub02}"
