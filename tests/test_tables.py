"""Tests of flatprep.tables: the one TSV writer and reader."""

import math

import numpy as np
import pytest

from flatprep.exceptions import InputError
from flatprep.tables import format_cell, read_participants, read_tsv, tsv_text, write_tsv


def test_tsv_round_trip_keeps_values_and_missing_cells(tmp_path):
    rows = [{"run": "sub-01_task-rest", "frames": 120, "tr": 0.72, "note": None},
            {"run": "sub-02_task-rest", "frames": 90, "tr": float("nan")}]
    path = write_tsv(tmp_path / "runs.tsv", rows, ["run", "frames", "tr", "note"])
    assert path.read_text().splitlines()[1] == "sub-01_task-rest\t120\t0.72\tn/a"
    back = read_tsv(path, required=["run", "tr"])
    assert back == [{"run": "sub-01_task-rest", "frames": "120", "tr": "0.72", "note": None},
                    {"run": "sub-02_task-rest", "frames": "90", "tr": None, "note": None}]
    assert [p.name for p in tmp_path.iterdir()] == ["runs.tsv"]  # nothing temporary left


def test_format_cell_rounds_floats_and_joins_sequences():
    assert format_cell(math.pi, digits=3) == "3.14" and format_cell(np.float32(0.5)) == "0.5"
    assert format_cell([1, 2.5]) == "1,2.5" and format_cell("") == "n/a"


def test_tsv_refuses_cells_that_would_not_read_back(tmp_path):
    with pytest.raises(ValueError, match="holds a tab or newline"):
        tsv_text([{"a": "x\ty"}], ["a"])
    with pytest.raises(ValueError, match=r"runs.tsv: TSV cell 'x\\ny' holds a tab or newline"):
        write_tsv(tmp_path / "runs.tsv", [{"a": "x\ny"}], ["a"])
    assert list(tmp_path.iterdir()) == []


def test_read_tsv_names_the_file_and_the_missing_column(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\nsub-01\t30\nsub-02\tn/a\n")
    assert read_participants(path) == {"01": {"participant_id": "sub-01", "age": "30"},
                                       "02": {"participant_id": "sub-02", "age": None}}
    with pytest.raises(InputError, match=r"participants.tsv: missing columns \['group'\]"):
        read_tsv(path, required=["group"])
    with pytest.raises(InputError, match="missing.tsv: cannot read the table"):
        read_tsv(tmp_path / "missing.tsv")


def test_read_text_names_the_file_and_what_it_should_hold(tmp_path):
    from flatprep.tables import read_text

    with pytest.raises(InputError, match="absent.tsv: no such file"):
        read_text(tmp_path / "absent.tsv", "the confounds table")
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("trans_x\n\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin.tsv: cannot read the confounds table"):
        read_text(latin, "the confounds table")
    latin.write_text("trans_x\n0.5\n", encoding="utf-8")
    assert read_text(latin, "the confounds table") == "trans_x\n0.5\n"


def test_line_breaks_other_than_newline_are_escaped_so_rows_stay_rows(tmp_path):
    path = write_tsv(tmp_path / "runs.tsv", [{"run": "a\rb", "error": "x\u2028y\x0bz"}], ["run", "error"])
    assert path.read_text(encoding="utf-8").splitlines() == ["run\terror", "a\\rb\tx\\u2028y\\x0bz"]
    assert read_tsv(path) == [{"run": "a\\rb", "error": "x\\u2028y\\x0bz"}]
