"""Training shards (flatprep.shards): planning, packing, manifest, mask encoding, splits, checksums."""

import json
import shutil

import h5py
import numpy as np
import pytest

from flatprep.exceptions import ShardFormatError, ShardOptionsError
from flatprep.h5 import read_run_attrs
from flatprep.shards import (MANIFEST_COLUMNS, RunEntry, ShardOptions, assign_splits, collect_runs, decode_mask,
                             encode_mask, existing_shard_matches, manifest_extras, manifest_rows, plan_shards,
                             read_manifest, shard_key, shard_name, summary_by_split, write_manifest, write_shard)

from builders import flip_bytes_in_frames


def _entry(label, n_frames, subject="01"):
    return RunEntry(label, f"{label}.h5", "0" * 64, n_frames, 1.0, {"subject": subject, "task": "rest"})


@pytest.fixture(scope="module")
def packed(participant_out, tmp_path_factory):
    """The sample subjects' per-run files packed with clip_frames=16 into shards of about two runs."""
    out = tmp_path_factory.mktemp("packed")
    runs, grid, problems = collect_runs(participant_out)
    assert problems == [] and len(runs) == 4
    n_pixels = int(grid["n_valid_pixels"])
    options = ShardOptions(clip_frames=16, target_bytes=2 * 64 * n_pixels * 2, split_ratios=(0.5, 0.5, 0.0))
    planned = plan_shards(runs, n_pixels, options)
    infos = [write_shard(out / shard_name(k), chunk, participant_out, grid, options, index=k)
             for k, chunk in enumerate(planned)]
    splits = assign_splits(sorted({r.entities["subject"] for r in runs}), options)
    rows = manifest_rows(planned, infos, splits, options)
    write_manifest(out, rows, infos, grid, options, **manifest_extras(participant_out, runs))
    return out, planned, infos, rows, options


# --------------------------------------------------------------------------- planning


def test_plan_keeps_whole_runs_in_label_order_up_to_the_target():
    # 20 frames pad to 32 (two 16-frame clips): 32 * 100 pixels * 2 bytes = 6400 bytes per run.
    runs = [_entry(name, 20) for name in "edcba"]
    planned = plan_shards(runs, 100, ShardOptions(clip_frames=16, target_bytes=13_000))
    assert [[r.label for r in shard] for shard in planned] == [["a", "b"], ["c", "d"], ["e"]]
    # A run larger than the target gets a shard of its own rather than being split.
    big = plan_shards([_entry("a", 10), _entry("b", 500), _entry("c", 10)], 100,
                      ShardOptions(clip_frames=16, target_bytes=10_000))
    assert [[r.label for r in shard] for shard in big] == [["a"], ["b"], ["c"]]


def test_shard_key_changes_with_content_and_options():
    runs = [_entry("a", 20), _entry("b", 30)]
    options = ShardOptions()
    assert shard_key(runs, options) == shard_key(list(runs), ShardOptions())
    assert shard_key(runs[:1], options) != shard_key(runs, options)
    assert shard_key(runs, ShardOptions(clip_frames=8)) != shard_key(runs, options)
    changed = [runs[0], RunEntry("b", "b.h5", "1" * 64, 30, 1.0, {"subject": "01"})]
    assert shard_key(changed, options) != shard_key(runs, options)


# --------------------------------------------------------------------------- packing


def test_shards_hold_whole_runs_on_clip_boundaries(packed, participant_out):
    out, planned, infos, rows, options = packed
    assert len(planned) >= 2 and sum(len(s) for s in planned) == 4
    for shard_runs, info in zip(planned, infos):
        with h5py.File(out / info["file"]) as shard:
            frames = shard["frames"]
            assert frames.chunks == (16, frames.shape[1]) and frames.shape[0] == info["n_frames"]
            assert frames.shape[0] % 16 == 0
            for run in shard_runs:
                offset = info["offsets"][run.label]
                assert offset % 16 == 0
                with h5py.File(participant_out / run.source) as source:
                    np.testing.assert_array_equal(frames[offset:offset + run.n_frames], source["frames"][()])
                padded_end = offset + -(-run.n_frames // 16) * 16
                assert not np.any(frames[offset + run.n_frames:padded_end])  # padding is zeros
    for row in rows:
        assert int(row["clips"]) == int(row["frames"]) // 16


def test_a_per_run_file_changed_after_collection_is_refused(participant_out, tmp_path):
    copy = tmp_path / "flatprep"
    shutil.copytree(participant_out, copy)
    runs, grid, _ = collect_runs(copy)
    with h5py.File(copy / runs[0].source, "r+") as handle:
        handle.attrs["note"] = "edited"
    with pytest.raises(ShardFormatError, match=f"{runs[0].source}: changed since it was checked"):
        write_shard(tmp_path / shard_name(0), runs[:1], copy, grid, ShardOptions(), index=0)
    assert not (tmp_path / shard_name(0)).exists()


def test_kept_shard_must_match_key_and_checksum(packed, tmp_path):
    out, planned, infos, _, options = packed
    path = tmp_path / infos[0]["file"]
    shutil.copy(out / infos[0]["file"], path)
    key = shard_key(planned[0], options)
    assert existing_shard_matches(path, key, infos[0]["sha256"]) is True
    assert existing_shard_matches(path, shard_key(planned[1], options), infos[0]["sha256"]) is False
    assert existing_shard_matches(tmp_path / "absent.h5", key, infos[0]["sha256"]) is False
    unverifiable = existing_shard_matches(path, key, None)
    assert unverifiable == f"{path}: no checksum was recorded when it was written, so the file cannot be verified"
    flip_bytes_in_frames(path)
    corrupt = existing_shard_matches(path, key, infos[0]["sha256"])
    assert corrupt == f"{path}: sha256 differs from the one recorded when it was written (the file changed or is corrupt)"


# --------------------------------------------------------------------------- manifest


def test_manifest_round_trip(packed, participant_out):
    out, planned, infos, rows, options = packed
    read_rows, description = read_manifest(out)
    assert list(read_rows[0]) == MANIFEST_COLUMNS
    expected = [{k: None if v is None else str(v) for k, v in row.items()} for row in rows]
    assert read_rows == expected
    assert float(read_rows[0]["tr"]) == rows[0]["tr"]  # full precision, not a rounded cell
    assert description["clip_frames"] == 16 and description["compression"] == "none"
    assert [s["file"] for s in description["shards"]] == [i["file"] for i in infos]
    assert all("offsets" not in s for s in description["shards"])
    with h5py.File(participant_out / rows[0]["source"]) as run:
        np.testing.assert_array_equal(decode_mask(description["mask"]), run["grid/mask"][()])
    assert description["clean_request"] == read_run_attrs(participant_out / rows[0]["source"])[0]["clean_request"]
    assert summary_by_split(read_rows)["train"]["runs"] == sum(r["split"] == "train" for r in rows)


def test_read_manifest_names_missing_files_and_columns(packed, tmp_path):
    out = packed[0]
    copy = tmp_path / "shards"
    copy.mkdir()
    with pytest.raises(ShardFormatError, match="manifest.tsv: missing; run the group level first"):
        read_manifest(copy)
    shutil.copy(out / "manifest.json", copy / "manifest.json")
    (copy / "manifest.tsv").write_text("run\tshard\n")
    with pytest.raises(ShardFormatError, match="manifest.tsv: missing columns"):
        read_manifest(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ShardFormatError, match="manifest.json: not valid JSON"):
        read_manifest(copy)


def test_mask_run_lengths_round_trip_on_the_real_grid(grid):
    encoded = encode_mask(grid.mask)
    assert encoded["shape"] == list(grid.shape) and sum(encoded["runs"]) == grid.mask.size
    assert len(encoded["runs"]) < grid.mask.size // 20  # a compact encoding of two hemisphere blobs
    decoded = decode_mask(json.loads(json.dumps(encoded)))
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, grid.mask)
    inverted = encode_mask(~grid.mask)  # starts with a True pixel: a leading empty False run
    assert inverted["runs"][0] == 0
    np.testing.assert_array_equal(decode_mask(inverted), ~grid.mask)


@pytest.mark.parametrize("encoded", [{"shape": [2, 3], "runs": [1, 2]}, {"shape": [2, 3], "runs": [7, -1]},
                                     {"shape": [6], "runs": [6]}, {"runs": [6]}])
def test_bad_mask_encoding_names_the_manifest(encoded):
    with pytest.raises(ShardFormatError, match="m.json: mask is not a valid run-length encoding"):
        decode_mask(encoded, "m.json")


# --------------------------------------------------------------------------- splits and options


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
    with pytest.raises(ShardOptionsError, match="split_ratios must be three non-negative fractions"):
        ShardOptions(split_ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ShardOptionsError, match="compression must be one of .none., .blosc-lz4.; got .gzip."):
        ShardOptions(compression="gzip")
