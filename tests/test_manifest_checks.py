"""validate catches a tampered manifest (flatprep.manifest_checks): one line per problem, naming what is wrong."""

import json

import pytest

from flatprep.manifest_checks import manifest_problems
from flatprep.shards import read_manifest
from flatprep.validate import validate_output

from builders import read_manifest_rows, write_manifest_rows


def _edit_json(out, change):
    path = out / "shards" / "manifest.json"
    description = json.loads(path.read_text())
    change(description)
    path.write_text(json.dumps(description))
    return description


def test_grouped_manifest_has_no_problem(grouped):
    rows, description = read_manifest(grouped / "shards")
    assert manifest_problems(grouped / "shards", rows, description) == []


def test_duplicated_manifest_row_gives_one_line(copy_of):
    rows = read_manifest_rows(copy_of)
    write_manifest_rows(copy_of, rows + [rows[1]])
    counted = sum(r["shard"] == rows[1]["shard"] for r in rows)
    assert validate_output(copy_of) == [
        f"manifest.tsv: run {rows[1]['run']} listed 2 times",
        f"manifest.json: shard {rows[1]['shard']} has n_runs {counted}, manifest.tsv lists {counted + 1} run(s) in it"]


def test_shard_listed_twice_gives_one_line(copy_of):
    description = _edit_json(copy_of, lambda d: d["shards"].append(dict(d["shards"][0])))
    assert validate_output(copy_of) == [f"manifest.json: shard {description['shards'][0]['file']} listed 2 times"]


@pytest.mark.parametrize("key", ["n_frames", "n_runs"])
def test_wrong_shard_counts_give_one_line(copy_of, key):
    description = _edit_json(copy_of, lambda d: d["shards"][0].update({key: d["shards"][0][key] + 16}))
    entry = description["shards"][0]
    problems = validate_output(copy_of)
    assert problems[0].startswith(f"manifest.json: shard {entry['file']} has {key} {entry[key]}, ")
    if key == "n_frames":  # the file itself says otherwise too
        assert problems[1:] == [f"{copy_of / 'shards' / entry['file']}: /frames has {entry[key] - 16} frames, "
                                f"manifest.json says n_frames {entry[key]}"]
    else:
        assert len(problems) == 1


def test_subject_relabelled_in_every_row_is_caught_against_splits_tsv(copy_of):
    rows = read_manifest_rows(copy_of)
    subject = rows[0]["subject"]
    old = rows[0]["split"]
    for row in rows:
        if row["subject"] == subject:
            row["split"] = "train" if old != "train" else "test"
    write_manifest_rows(copy_of, rows)
    problems = validate_output(copy_of)
    mine = [r for r in rows if r["subject"] == subject]
    assert problems == [f"manifest.tsv: run {r['run']} is labelled {r['split']}, splits.tsv puts subject {subject} "
                        f"in {old}" for r in mine]


def test_unfinished_regroup_beside_a_manifest_is_reported(copy_of):
    journal = copy_of / "shards" / "journal.json"
    journal.write_text("{}")
    assert validate_output(copy_of) == [f"{journal}: a group level started writing shards and did not finish; the "
                                        "manifest still describes the previous shard set; rerun the group level"]
