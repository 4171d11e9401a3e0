"""flatprep.validate: each kind of damage to a grouped output folder gives one line naming the file."""

import shutil

import h5py

from flatprep.pipelines.cli.validate import main as validate_main
from flatprep.validate import validate_output

from builders import flip_bytes_in_frames, read_manifest_rows, write_manifest_rows


def _shards(out):
    return sorted((out / "shards").glob("*.h5"))


def test_a_consistent_folder_has_no_problem(grouped):
    assert validate_output(grouped) == []


def test_edited_shard_frames_give_one_checksum_line(copy_of):
    shard = _shards(copy_of)[0]
    with h5py.File(shard, "r+") as handle:
        handle["frames"][0, 0] = 7.0
    assert validate_output(copy_of) == [f"{shard}: sha256 differs from manifest.json (the file changed or is corrupt)"]


def test_flipped_bytes_in_a_shard_are_caught(copy_of):
    shard = _shards(copy_of)[0]
    flip_bytes_in_frames(shard)
    problems = validate_output(copy_of)
    assert problems[0] == f"{shard}: sha256 differs from manifest.json (the file changed or is corrupt)"
    assert all(p.startswith(f"{shard}: ") for p in problems)


def test_truncated_shard_is_unreadable_and_fails_its_checksum(copy_of):
    shard = _shards(copy_of)[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    problems = validate_output(copy_of)
    assert len(problems) == 2 and all(p.startswith(f"{shard}: ") for p in problems)
    assert "sha256 differs" in problems[0] and "cannot be read" in problems[1]


def test_deleted_shard_gives_one_line(copy_of):
    shard = _shards(copy_of)[0]
    shard.unlink()
    assert validate_output(copy_of) == [f"{shard}: listed in manifest.json but missing"]


def test_deleted_run_gives_one_line(copy_of):
    row = read_manifest_rows(copy_of)[1]
    source = copy_of / row["source"]
    source.unlink()
    source.with_suffix(".json").unlink()  # else its sidecar is reported as an orphan too
    assert validate_output(copy_of) == [f"{source}: listed in manifest.tsv (run {row['run']}) but missing"]


def test_run_changed_after_the_group_level_gives_one_line(copy_of):
    source = copy_of / read_manifest_rows(copy_of)[0]["source"]
    with h5py.File(source, "r+") as handle:
        handle.attrs["note"] = "edited after packing"
    assert validate_output(copy_of) == [f"{source}: sha256 differs from manifest.tsv (changed since the group level)"]


def test_subject_copied_into_two_splits_names_the_relabelled_run_and_the_subject(copy_of):
    rows = read_manifest_rows(copy_of)
    subject = rows[0]["subject"]
    mine = [r for r in rows if r["subject"] == subject]
    assert len(mine) >= 2 and len({r["split"] for r in mine}) == 1
    mine[-1]["split"] = "test"
    write_manifest_rows(copy_of, rows)
    splits = ", ".join(sorted({"test", mine[0]["split"]}))
    assert validate_output(copy_of) == [
        f"manifest.tsv: run {mine[-1]['run']} is labelled test, splits.tsv puts subject {subject} in {mine[0]['split']}",
        f"manifest.tsv: subject {subject} appears in several splits ({splits})"]


def test_offset_off_the_clip_grid_gives_one_line(copy_of):
    rows = read_manifest_rows(copy_of)
    rows[0]["offset"] = str(int(rows[0]["offset"]) + 1)
    write_manifest_rows(copy_of, rows)
    assert validate_output(copy_of) == [
        f"manifest.tsv: run {rows[0]['run']} starts at frame {rows[0]['offset']}, not a multiple of 16"]


def test_unlisted_shard_and_run_give_one_line_each(copy_of):
    stray = copy_of / "shards" / "shard-00099_flatclips.h5"
    shutil.copy(_shards(copy_of)[0], stray)
    extra_run = copy_of / "sub-09" / "func" / "sub-09_task-rest_space-fsLR_den-91k_desc-flat_bold.h5"
    extra_run.parent.mkdir(parents=True)
    shutil.copy(copy_of / read_manifest_rows(copy_of)[0]["source"], extra_run)
    assert validate_output(copy_of) == [
        f"{stray}: shard present but not listed in manifest.json",
        f"{extra_run}: per-run file present but not listed in manifest.tsv (rerun the group level)",
    ]


def test_leftover_temporaries_and_orphan_sidecars_give_one_line_each(copy_of):
    debris = copy_of / "shards" / ".shard-00000_flatclips.h5.12345-node7.x1y2z3w4.tmp"
    debris.write_bytes(b"half a shard")
    orphan = copy_of / "sub-07" / "func" / "sub-07_task-rest_space-fsLR_den-91k_desc-flat_bold.json"
    orphan.parent.mkdir(parents=True)
    orphan.write_text("{}")
    problems = validate_output(copy_of)
    assert problems == [f"{debris}: temporary file of an interrupted write (a killed run, or a job still writing); "
                        "the next flatprep run removes it",
                        f"{orphan}: sidecar without its .h5 (an interrupted run); rerun the participant level"]


def test_missing_manifest_gives_one_line(copy_of):
    manifest = copy_of / "shards" / "manifest.json"
    manifest.unlink()
    assert validate_output(copy_of) == [f"{manifest}: missing; run the group level first"]


def test_validate_command_exit_codes(grouped, copy_of, capsys):
    assert validate_main([str(grouped)]) == 0
    assert capsys.readouterr().out == f"{grouped}: valid\n"
    (copy_of / "shards" / "manifest.json").unlink()
    assert validate_main([str(copy_of)]) == 1
    assert capsys.readouterr().out.splitlines() == [f"{copy_of / 'shards' / 'manifest.json'}: missing; run the "
                                                    "group level first", f"{copy_of}: 1 problem(s)"]
