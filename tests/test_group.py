"""The group level: shards, manifest, splits, validation and corruption."""

import csv
import json
import shutil

import h5py
import numpy as np
import pytest

from flatprep.exceptions import ShardFormatError
from flatprep.pipelines.cli.run import main
from flatprep.pipelines.cli.validate import main as validate_main
from flatprep.shards import ShardOptions, assign_splits, read_manifest
from flatprep.validate import validate_output


@pytest.fixture(scope="module")
def grouped(participant_out, sample_bids, tmp_path_factory):
    out = tmp_path_factory.mktemp("group") / "flatprep"
    shutil.copytree(participant_out, out)
    # Small shards so the four runs spread over several files.
    assert main([str(sample_bids), str(out), "group", "--shard-size", "0.004", "--split-ratios", "0.5", "0.5", "0"]) == 0
    return out


@pytest.fixture
def copy_of(grouped, tmp_path):
    out = tmp_path / "flatprep"
    shutil.copytree(grouped, out)
    return out


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
    assert (grouped / "group.html").exists() and (grouped / "figures" / "group_mean_flatmaps.png").exists()


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


def test_assign_splits_keeps_groups_together_and_is_deterministic():
    subjects = [f"{i:02d}" for i in range(20)]
    families = {s: f"fam{int(s) // 2}" for s in subjects}
    options = ShardOptions(split_ratios=(0.6, 0.2, 0.2), split_seed=3)
    first = assign_splits(subjects, options, families)
    assert first == assign_splits(subjects, options, families)
    for a, b in zip(subjects[::2], subjects[1::2]):
        assert first[a][0] == first[b][0]
    assert {split for split, _ in first.values()} == {"train", "val", "test"}
    assert assign_splits(subjects, ShardOptions(split_seed=4), families) != first


def test_bad_shard_options_are_refused():
    with pytest.raises(ValueError, match="split_ratios must be three non-negative fractions"):
        ShardOptions(split_ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="compression must be one of .none., .blosc-lz4.; got .gzip."):
        ShardOptions(compression="gzip")


def test_blosc_shards_read_back_identically(participant_out, sample_bids, tmp_path):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    assert main([str(sample_bids), str(out), "group", "--compression", "blosc-lz4", "--no-figures"]) == 0
    assert validate_output(out) == []
    (row, *_), _ = read_manifest(out / "shards")
    with h5py.File(out / "shards" / row["shard"]) as shard, h5py.File(out / row["source"]) as run:
        offset, n = int(row["offset"]), int(row["frames"])
        np.testing.assert_array_equal(shard["frames"][offset:offset + n], run["frames"][()])


# --------------------------------------------------------------------------- corruption


def _flip_bytes(path, where=0.5, n=64):
    data = bytearray(path.read_bytes())
    start = int(len(data) * where)
    data[start:start + n] = bytes(255 - b for b in data[start:start + n])
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_shard_are_caught(copy_of):
    shard = sorted((copy_of / "shards").glob("*.h5"))[0]
    _flip_bytes(shard)
    problems = validate_output(copy_of)
    assert any(shard.name in p and "sha256 differs" in p for p in problems)


def test_truncated_shard_is_caught(copy_of):
    shard = sorted((copy_of / "shards").glob("*.h5"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    problems = validate_output(copy_of)
    assert any(shard.name in p and "cannot be read" in p for p in problems)


def test_deleted_run_is_caught(copy_of):
    source = copy_of / _rows(copy_of)[1]["source"]
    source.unlink()
    assert any(f"{source}: listed in manifest.tsv" in p for p in validate_output(copy_of))


def test_subject_copied_into_two_splits_is_caught(copy_of):
    rows = _rows(copy_of)
    subject = rows[0]["subject"]
    second = [r for r in rows if r["subject"] == subject][-1]
    second["split"] = "test"
    path = copy_of / "shards" / "manifest.tsv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert any(f"subject {subject} appears in several splits" in p for p in validate_output(copy_of))


def test_unlisted_files_are_caught(copy_of):
    stray = copy_of / "shards" / "shard-00099_flatclips.h5"
    shutil.copy(sorted((copy_of / "shards").glob("*.h5"))[0], stray)
    extra_run = copy_of / "sub-09" / "func" / "sub-09_task-rest_space-fsLR_den-91k_desc-flat_bold.h5"
    extra_run.parent.mkdir(parents=True)
    shutil.copy(copy_of / _rows(copy_of)[0]["source"], extra_run)
    problems = validate_output(copy_of)
    assert any("shard-00099_flatclips.h5: shard present but not listed" in p for p in problems)
    assert any("sub-09_task-rest" in p and "not listed in manifest.tsv" in p for p in problems)


def test_validate_command_exit_codes(grouped, copy_of, capsys):
    assert validate_main([str(grouped)]) == 0
    assert "valid" in capsys.readouterr().out
    (copy_of / "shards" / "manifest.json").unlink()
    assert validate_main([str(copy_of)]) == 1
    assert "manifest.json: missing" in capsys.readouterr().out


def test_read_manifest_names_missing_columns(copy_of):
    path = copy_of / "shards" / "manifest.tsv"
    path.write_text("run\tshard\n")
    with pytest.raises(ShardFormatError, match="manifest.tsv: missing columns"):
        read_manifest(copy_of / "shards")


def test_group_level_without_runs_is_refused(sample_bids, tmp_path, caplog):
    assert main([str(sample_bids), str(tmp_path / "empty"), "group"]) == 2
    assert "no complete per-run flat maps" in caplog.text


def test_leftover_temporaries_and_orphan_sidecars_are_reported(copy_of):
    debris = copy_of / "shards" / ".shard-00000_flatclips.h5.12345-node7.x1y2z3w4.tmp"
    debris.write_bytes(b"half a shard")
    orphan = copy_of / "sub-07" / "func" / "sub-07_task-rest_space-fsLR_den-91k_desc-flat_bold.json"
    orphan.parent.mkdir(parents=True)
    orphan.write_text("{}")
    problems = validate_output(copy_of)
    assert problems == [f"{debris}: temporary file of an interrupted write (a killed run, or a job still writing); "
                        "the next flatprep run removes it",
                        f"{orphan}: sidecar without its .h5 (an interrupted run); rerun the participant level"]
