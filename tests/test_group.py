"""The group level end to end: shards, manifest, splits, reruns, compression."""

import csv
import json
import shutil

import h5py
import numpy as np

from flatprep.pipelines.cli.run import main
from flatprep.shards import read_manifest
from flatprep.validate import validate_output


def _rows(out):
    with (out / "shards" / "manifest.tsv").open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_group_level_writes_valid_shards_and_manifest(grouped):
    assert validate_output(grouped) == []
    rows, description = read_manifest(grouped / "shards")
    assert len(rows) == 4 and description["clip_frames"] == 16
    assert len(description["shards"]) >= 2
    for row in rows:
        assert int(row["offset"]) % 16 == 0 and int(row["clips"]) == int(row["frames"]) // 16
    # The shard holds the run's frames exactly, at its offset.
    row = rows[0]
    with h5py.File(grouped / "shards" / row["shard"]) as shard, h5py.File(grouped / row["source"]) as run:
        offset, n = int(row["offset"]), int(row["frames"])
        np.testing.assert_array_equal(shard["frames"][offset:offset + n], run["frames"][()])
        assert shard["frames"].chunks == (16, run["frames"].shape[1])
        assert np.array_equal(shard["grid/mask"][()], run["grid/mask"][()])
    assert (grouped / "group.html").exists() and (grouped / "figures" / "group_desc-mean_flatmap.png").exists()


def test_splits_are_by_subject(grouped):
    splits = {}
    for row in _rows(grouped):
        splits.setdefault(row["subject"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {next(iter(s)) for s in splits.values()} == {"train", "val"}


def test_same_inputs_give_the_same_shards_and_a_rerun_keeps_them(grouped, sample_bids, copy_of):
    before = json.loads((grouped / "shards" / "manifest.json").read_text())
    assert main([str(sample_bids), str(copy_of), "group", "--shard-size", "0.004",
                 "--split-ratios", "0.5", "0.5", "0", "--force"]) == 0
    after = json.loads((copy_of / "shards" / "manifest.json").read_text())
    assert [s["sha256"] for s in after["shards"]] == [s["sha256"] for s in before["shards"]]
    assert _rows(copy_of) == _rows(grouped)


def test_blosc_shards_read_back_identically(participant_out, sample_bids, tmp_path):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    assert main([str(sample_bids), str(out), "group", "--compression", "blosc-lz4", "--no-figures"]) == 0
    assert validate_output(out) == []
    (row, *_), _ = read_manifest(out / "shards")
    with h5py.File(out / "shards" / row["shard"]) as shard, h5py.File(out / row["source"]) as run:
        offset, n = int(row["offset"]), int(row["frames"])
        np.testing.assert_array_equal(shard["frames"][offset:offset + n], run["frames"][()])


def test_group_level_without_runs_is_refused(sample_bids, tmp_path, caplog):
    assert main([str(sample_bids), str(tmp_path / "empty"), "group"]) == 2
    assert "no complete per-run flat maps" in caplog.text
