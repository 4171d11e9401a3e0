"""The per-participant report says what was done to each run, from the run's own files."""

import json
import re
import shutil

import pytest

from flatprep import __version__
from flatprep.pipelines.report import (REPORT_CSS, cleaning_sentence, methods_paragraph, spaces_present,
                                       write_participant_report)
from flatprep.tables import read_tsv


def _rows(out, subject="01") -> list[dict]:
    return [row for row in read_tsv(out / "runs.tsv") if row["subject"] == subject]


def test_report_names_inputs_space_cleaning_grid_and_command(participant_out, sample_bids):
    report = (participant_out / "sub-01.html").read_text()
    sidecar = json.loads(next((participant_out / "sub-01" / "func").glob("*task-rest*_bold.json")).read_text())
    # Every input file, by its path in the input dataset.
    for uri in sidecar["Sources"]:  # bids:<dataset>:<path in it>
        path = sample_bids / ("" if uri.startswith("bids:raw:") else "derivatives/fmriprep") / uri.split(":", 2)[2]
        assert f"<span class='path'>{path}</span>" in report, path
    # The sample has fsLR and fsaverage5 runs: the first is used, the other is named.
    assert "fsLR (used); other spaces of this run present: fsaverage5" in report
    assert "removed a linear trend from each time series; no confound regression; resampled from TR" in report
    assert "112 x 288 pixels of 2.4 mm" in report
    assert f"flatprep {__version__}" in report and "numpy " in report and "nipype " in report
    assert re.search(r"<code>flatprep \S+ \S+ participant --pixel-size 2.4</code>", report)
    assert "Functional runs (fsLR) were converted to cortical flat maps" in report
    assert report.count("OK: processed") == 2 + 2  # the summary table and each run's section
    assert "No run failed." in report and REPORT_CSS.strip()[:20] in report
    assert "http://" not in report and "https://" not in report  # stands alone: nothing fetched from elsewhere


def test_report_lists_failures_and_sidecar_notes_in_words_that_cannot_be_misread(participant_out, tmp_path):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    rows = _rows(out)
    sidecar = out / rows[0]["out_file"].replace(".h5", ".json")
    values = json.loads(sidecar.read_text())
    values["VolumeSampling"] = {"Note": "MNI152NLin2009cAsym input sampled with the surfaces of MNI152NLin6Asym"}
    sidecar.write_text(json.dumps(values))
    rows[1] |= {"status": "failed", "error": "sub-01_task-rest_bold.json: RepetitionTime missing",
                "out_file": ""}
    write_participant_report(out, "01", rows, command="flatprep bids out participant")
    report = (out / "sub-01.html").read_text()
    errors = report.split("<h3>Errors (1)</h3>")[1].split("<h3>Warnings")[0]
    assert "RepetitionTime missing" in errors and rows[1]["run"] in errors
    warnings = report.split("<h3>Warnings (1)</h3>")[1].split("<h2")[0]
    assert "MNI152NLin2009cAsym input sampled with the surfaces of MNI152NLin6Asym" in warnings
    assert "FAILED" in report and "OK: processed" in report
    assert "Functional runs (fsLR, MNI" not in report  # the methods describe the processed runs only


def test_cleaning_sentence_follows_the_recorded_options():
    options = {"detrend": "highpass", "highpass_hz": 0.01, "confounds_strategy": "motion", "target_tr": None,
               "standardize": True}
    text = cleaning_sentence(options, n_dropped=0, tr_in=2.0, tr_out=2.0)
    assert text == ("no volumes dropped (no non-steady-state volumes flagged); high-pass filtered at 0.01 Hz "
                    "(DCT regression); regressed out the motion confounds; kept the input TR of 2 s; z-scored each "
                    "time series (mean and SD kept); stored as float16.")
    assert methods_paragraph([], []) == ""


def test_spaces_present_are_the_same_run_in_other_spaces(tmp_path):
    for name in ("sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii", "sub-01_task-rest_hemi-L_space-"
                 "fsaverage5_bold.func.gii", "sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz",
                 "sub-01_task-motor_space-fsaverage6_hemi-L_bold.func.gii",
                 "sub-01_task-rest_desc-confounds_timeseries.tsv"):
        (tmp_path / name).write_text("")
    assert spaces_present(tmp_path / "sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii") == [
        "MNI152NLin6Asym", "fsLR", "fsaverage5"]


@pytest.mark.parametrize("status, word", [("done", "OK: processed"), ("skipped", "OK: already complete"),
                                          ("failed", "FAILED")])
def test_status_badges_spell_the_outcome(status, word):
    from flatprep.pipelines.report import status_badge

    assert f">{word}<" in status_badge(status)
