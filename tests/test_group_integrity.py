"""The group level tells the truth: splits kept across regroups, one writer, readers safe across a regroup,
one recipe per shard set, one space per acquisition, duplicates never across splits, QC exclusion."""

import csv
import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from flatprep.locks import group_lock
from flatprep.pipelines.cli.run import main
from flatprep.shards import read_manifest
from flatprep.validate import validate_output


def _group(sample_bids, out, *extra):
    return main([str(sample_bids), str(out), "group", "--shard-size", "0.004", "--split-ratios", "0.5", "0.5", "0",
                 "--no-figures", *extra])


def _runs(out, subject):
    return sorted((out / f"sub-{subject}").glob("func/*_desc-flat_bold.*"))


def _splits(out) -> dict:
    rows, _ = read_manifest(out / "shards")
    return {row["subject"]: row["split"] for row in rows}


def _record(out) -> dict:
    with (out / "shards" / "splits.tsv").open(newline="") as handle:
        return {row["subject"]: row["split"] for row in csv.DictReader(handle, delimiter="\t")}


@pytest.fixture
def out(participant_out, tmp_path):
    copy = tmp_path / "flatprep"
    shutil.copytree(participant_out, copy)
    return copy


def _clone_run(out, source, subject=None, space=None):
    """A copy of a per-run file under another subject or space (same frames), sidecar included."""
    label = source.name
    with h5py.File(source) as handle:
        attrs_entities = json.loads(handle.attrs["entities"])
    if subject:
        label = label.replace(f"sub-{attrs_entities['subject']}", f"sub-{subject}")
        attrs_entities["subject"] = subject
    if space:
        label = label.replace(f"space-{attrs_entities['space']}", f"space-{space}").replace("_den-91k", "")
        attrs_entities["space"] = space
        attrs_entities.pop("density", None)
    target = out / f"sub-{attrs_entities['subject']}" / "func" / label
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    shutil.copy(source.with_suffix(".json"), target.with_suffix(".json"))
    with h5py.File(target, "r+") as handle:
        handle.attrs["entities"] = json.dumps(attrs_entities)
    return target


def test_regroup_keeps_recorded_splits_when_subjects_come_and_go(sample_bids, out, caplog):
    held = {}
    for path in _runs(out, "02"):  # the group level first sees subject 01 alone
        held[path] = path.read_bytes()
        path.unlink()
    assert _group(sample_bids, out) == 0
    first = _record(out)
    assert list(first) == ["01"]
    for path, data in held.items():  # subject 02 arrives
        path.write_bytes(data)
    assert _group(sample_bids, out) == 0
    assert _splits(out)["01"] == first["01"] and set(_record(out)) == {"01", "02"}
    second = _record(out)
    for path in _runs(out, "01"):  # subject 01 leaves: 02 stays where it was, 01 stays recorded
        path.unlink()
    caplog.clear()
    caplog.set_level("INFO")
    assert _group(sample_bids, out) == 0
    assert _splits(out) == {"02": second["02"]} and _record(out) == second
    assert "splits: 1 recorded subject(s) without runs now, kept in splits.tsv with their split: 01" in caplog.text
    assert f"splits: {second['02']}: 1 subject(s) = 100.0 % (asked 50.0 %)" in caplog.text
    assert validate_output(out) == []


def test_changed_split_seed_is_refused_without_resplit(sample_bids, out, caplog):
    assert _group(sample_bids, out) == 0
    before = _record(out)
    caplog.clear()
    assert _group(sample_bids, out, "--split-seed", "5") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "the recorded splits were made with other settings (seed 0 -> 5)" in errors[0]
    assert _record(out) == before
    assert _group(sample_bids, out, "--split-seed", "5", "--resplit") == 0
    assert json.loads((out / "shards" / "splits.json").read_text())["seed"] == 5
    assert validate_output(out) == []


def test_second_group_level_exits_2_with_one_line_while_one_holds_the_lock(sample_bids, out, caplog):
    with group_lock(out):
        assert _group(sample_bids, out) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{out}: another group level is writing its shards (lock {out / '.locks' / 'group.lock'} is "
                      "held); wait for it to finish, or rerun with --wait"]
    assert not (out / "shards").exists()
    assert _group(sample_bids, out) == 0  # released: the next one runs


def test_reader_of_the_previous_manifest_keeps_reading_after_a_regroup(sample_bids, out):
    from flatprep.learn.data import FlatClipsDataset

    assert _group(sample_bids, out) == 0
    before = FlatClipsDataset(out)  # a trainer that started on this shard set
    first = [before[i]["values"].clone() for i in range(len(before))]
    before.close()
    # The regroup packs other content (another clip length): every shard gets a new file.
    assert _group(sample_bids, out, "--clip-frames", "8") == 0
    _, description = read_manifest(out / "shards")
    old = set(before.index.shard_files)
    assert old & {s["file"] for s in description["shards"]} == set()
    assert {s["file"] for s in description["retired_shards"]} == old
    for i, values in enumerate(first):  # the old set is still there, byte for byte, read through the old index
        assert torch.equal(before[i]["values"], values)
    before.close()
    assert validate_output(out) == []
    assert _group(sample_bids, out, "--clip-frames", "8") == 0  # the next regroup removes what was retired
    assert not any((out / "shards" / name).exists() for name in old)
    assert validate_output(out) == []


def test_run_at_another_tr_is_refused_with_one_line(sample_bids, out, caplog):
    odd = _runs(out, "02")[0]
    with h5py.File(odd, "r+") as handle:
        handle.attrs["tr_out"] = 1.5
    assert _group(sample_bids, out) == 1
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"refused: {odd.relative_to(out)}")]
    assert refused == [f"refused: {odd.relative_to(out)}: another recipe than the shard set's (TR 1.5 s, the set's is "
                       "1 s); rerun the participant level for it with the set's options, or pack it in another "
                       "output folder"]
    rows, description = read_manifest(out / "shards")
    assert odd.name.replace("_desc-flat_bold.h5", "") not in {r["run"] for r in rows}
    assert {float(r["tr"]) for r in rows} == {1.0}


def test_same_acquisition_in_two_spaces_is_packed_once(sample_bids, out):
    source = _runs(out, "01")[0]
    other = _clone_run(out, source, space="fsaverage5")
    assert _group(sample_bids, out) == 0
    rows, description = read_manifest(out / "shards")
    packed = {r["run"] for r in rows}
    assert source.name.replace("_desc-flat_bold.h5", "") in packed and len(rows) == 4
    (left,) = description["selection"]["left_out"]
    assert left["source"] == other.relative_to(out).as_posix()
    assert "packed in space fsLR (chosen by the participant level's space order)" in left["reason"]
    assert _group(sample_bids, out, "--space", "fsaverage5") == 0
    rows, description = read_manifest(out / "shards")
    assert other.name.replace("_desc-flat_bold.h5", "") in {r["run"] for r in rows}
    assert "(chosen by --space)" in description["selection"]["left_out"][0]["reason"]
    assert validate_output(out) == []  # the run left out is accounted for, not an unlisted file


def test_identical_frames_under_another_subject_are_packed_once(sample_bids, out):
    source = _runs(out, "01")[0]
    twin = _clone_run(out, source, subject="03")
    assert _group(sample_bids, out) == 0
    rows, description = read_manifest(out / "shards")
    assert "03" not in {r["subject"] for r in rows}
    (left,) = description["selection"]["left_out"]
    original = source.name.replace("_desc-flat_bold.h5", "")
    assert left["source"] == twin.relative_to(out).as_posix()
    assert left["reason"] == f"identical BOLD inputs (same sha256) to {original}: one scan under two names, packed once"
    with h5py.File(twin, "r+") as handle:  # other input files (say, renamed and re-saved), the same frames
        handle.attrs["sources"] = "[]"
    assert _group(sample_bids, out) == 0
    _, description = read_manifest(out / "shards")
    assert description["selection"]["left_out"][0]["reason"].startswith(
        f"identical frames (same content checksum) to {original}")
    assert validate_output(out) == []


def _mean_fd(out, row) -> float:
    with h5py.File(out / row["source"]) as handle:
        sources, dropped = json.loads(handle.attrs["sources"]), int(handle.attrs["n_dropped"])
    table = next(s["path"] for s in sources if s["path"].endswith("_desc-confounds_timeseries.tsv"))
    with open(table, newline="") as handle:
        fd = [row["framewise_displacement"] for row in csv.DictReader(handle, delimiter="\t")][dropped:]
    return float(np.mean([float(v) for v in fd if v != "n/a"]))


def test_exclude_rules_leave_out_runs_before_splits_and_are_recorded(sample_bids, out, participant_out):
    assert _group(sample_bids, out) == 0
    all_rows, _ = read_manifest(out / "shards")
    fds = {row["run"]: _mean_fd(out, row) for row in all_rows}
    threshold = float(np.median(list(fds.values())))
    assert _group(sample_bids, out, "--exclude", f"mean_fd>{threshold}", "tsnr<1") == 0
    rows, description = read_manifest(out / "shards")
    expected = sorted(run for run, fd in fds.items() if fd > threshold)
    assert expected and sorted(entry["run"] for entry in description["selection"]["left_out"]) == expected
    assert {r["run"] for r in rows} == set(fds) - set(expected)
    assert description["selection"]["exclude"] == [f"mean_fd>{threshold:g}", "tsnr<1"]
    entry = description["selection"]["left_out"][0]
    assert entry["reason"].startswith(f"excluded: mean_fd>{threshold:g} (measured ")
    assert entry["metrics"]["mean_fd"] == pytest.approx(fds[entry["run"]], abs=1e-4)


def test_bad_exclude_rule_is_a_usage_error(sample_bids, out, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _group(sample_bids, out, "--exclude", "motion>3")
    assert exit_info.value.code == 2
    assert "--exclude 'motion>3': unknown metric 'motion'; choose from mean_fd, max_fd, tsnr, censored_fraction" in \
        capsys.readouterr().err


def test_run_file_replaced_by_another_subjects_copy_is_refused(sample_bids, out, caplog):
    theirs = next(p for p in _runs(out, "01") if "task-rest" in p.name and p.suffix == ".h5")
    mine = out / "sub-02" / "func" / theirs.name.replace("sub-01", "sub-02")
    shutil.copy(theirs, mine)
    assert _group(sample_bids, out) == 1
    line = (f"refused: {mine.relative_to(out)}: the file name says sub-02 but subject '01' inside (a copy of another "
            "run's file?); rerun the participant level for it")
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused:")] == [line]
    rows, _ = read_manifest(out / "shards")
    assert {(r["run"].split("_")[0], r["subject"]) for r in rows} == {("sub-01", "01"), ("sub-02", "02")}


def test_group_level_with_wait_waits_for_the_lock_then_runs(sample_bids, out, monkeypatch):
    import fcntl
    import threading

    import flatprep.locks

    asked = threading.Event()
    real_flock = fcntl.flock

    def flock(fd, operation):
        if not operation & fcntl.LOCK_NB:
            asked.set()  # the waiting group level has reached its blocking lock call
        return real_flock(fd, operation)

    result = {}
    with group_lock(out):
        monkeypatch.setattr(flatprep.locks.fcntl, "flock", flock)
        waiter = threading.Thread(target=lambda: result.update(rc=_group(sample_bids, out, "--wait")))
        waiter.start()
        assert asked.wait(120)
        assert not (out / "shards" / "manifest.json").exists()  # it cannot pass the lock while it is held
    waiter.join()
    assert result == {"rc": 0} and validate_output(out) == []


def test_failed_regroup_leaves_the_published_set_readable_and_valid(sample_bids, out, monkeypatch, caplog):
    import flatprep.h5
    from builders import DiskFull

    from flatprep.cache import file_digest
    from flatprep.learn.data import FlatClipsDataset

    assert _group(sample_bids, out) == 0
    manifest = out / "shards" / "manifest.json"
    published = file_digest(manifest)
    n_old = len(json.loads(manifest.read_text())["shards"])
    second_new = f"shard-{n_old + 1:05d}"  # the regroup's second new shard cannot be written
    monkeypatch.setattr(flatprep.h5, "open", DiskFull(budget=0, match=second_new), raising=False)
    assert _group(sample_bids, out, "--clip-frames", "8") == 1
    monkeypatch.undo()
    assert file_digest(manifest) == published  # still the previous set, which still reads
    dataset = FlatClipsDataset(out)
    assert all(np.isfinite(dataset[i]["values"].numpy()).all() for i in range(len(dataset)))
    dataset.close()
    assert validate_output(out) == [f"{out / 'shards' / 'journal.json'}: a group level started writing shards and "
                                    "did not finish; the manifest still describes the previous shard set; rerun "
                                    "the group level"]
    caplog.clear()
    caplog.set_level("INFO")
    assert _group(sample_bids, out, "--clip-frames", "8") == 0
    assert f"shard-{n_old:05d}_flatclips.h5 kept" in caplog.text  # the new shard written before the failure
    assert validate_output(out) == []
