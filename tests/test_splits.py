"""Splits that never move (flatprep.splits): the per-subject rule, the record, the refusals."""

import pytest

from flatprep.exceptions import ShardFormatError, ShardOptionsError
from flatprep.shards import ShardOptions
from flatprep.splits import (SPLITS_TSV, assign_splits, read_split_record, resolve_splits, split_by_rule,
                             write_split_record)

SUBJECTS = [f"{i:03d}" for i in range(200)]
OPTIONS = ShardOptions(split_ratios=(0.8, 0.1, 0.1), split_seed=3)


def _moved(before: dict, after: dict) -> list[str]:
    return sorted(s for s in set(before) & set(after) if before[s][0] != after[s][0])


def test_assign_splits_removing_or_adding_subjects_moves_no_other_subject():
    everyone = assign_splits(SUBJECTS, OPTIONS)
    assert _moved(everyone, assign_splits(SUBJECTS[1:], OPTIONS)) == []
    assert _moved(everyone, assign_splits(SUBJECTS[::2], OPTIONS)) == []
    more = assign_splits(SUBJECTS + [f"new{i}" for i in range(50)], OPTIONS)
    assert _moved(everyone, more) == []
    # The rule still follows the ratios at this size, and the seed matters.
    counts = {name: sum(split == name for split, _ in everyone.values()) for name in ("train", "val", "test")}
    assert 140 <= counts["train"] <= 180 and 8 <= counts["val"] <= 35 and 8 <= counts["test"] <= 35
    reseeded = assign_splits(SUBJECTS, ShardOptions(split_ratios=(0.8, 0.1, 0.1), split_seed=4))
    assert len(_moved(everyone, reseeded)) > 20


def test_assign_splits_keeps_groups_together_and_fills_empty_splits_of_small_sets():
    groups = {s: f"family{int(s) // 4}" for s in SUBJECTS}
    split_of = assign_splits(SUBJECTS, OPTIONS, groups)
    for family in set(groups.values()):
        assert len({split_of[s][0] for s in SUBJECTS if groups[s] == family}) == 1
    # Two subjects at 0.5/0.5/0: one each in train and val, whatever their hashes say.
    pair = assign_splits(["01", "02"], ShardOptions(split_ratios=(0.5, 0.5, 0.0)))
    assert sorted(split for split, _ in pair.values()) == ["train", "val"]
    half = ShardOptions(split_ratios=(0.5, 0.5, 0.0))
    same = [s for s in SUBJECTS if split_by_rule(f"sub-{s}", 0, half.split_ratios) == "train"][:2]
    assert sorted(split for split, _ in assign_splits(same, half).values()) == ["train", "val"]
    both_val = [s for s in SUBJECTS if split_by_rule(f"sub-{s}", 0, half.split_ratios) == "val"][:2]
    assert sorted(split for split, _ in assign_splits(both_val, half).values()) == ["train", "val"]
    # A single subject trains, whatever its hash says; three subjects at 0.8/0.1/0.1 fill all three splits.
    assert assign_splits(both_val[:1], half)[both_val[0]][0] == "train"
    assert sorted(split for split, _ in assign_splits(SUBJECTS[:3], OPTIONS).values()) == ["test", "train", "val"]


def test_recorded_subjects_keep_their_split_and_new_ones_follow_the_rule():
    recorded = {"000": ("test", "sub-000"), "001": ("test", "sub-001")}
    split_of = assign_splits(SUBJECTS, OPTIONS, recorded=recorded)
    assert split_of["000"] == ("test", "sub-000") and split_of["001"] == ("test", "sub-001")
    assert all(split_of[s][0] == split_by_rule(f"sub-{s}", 3, OPTIONS.split_ratios) for s in SUBJECTS[2:])


def test_split_record_round_trips_and_keeps_absent_subjects(tmp_path):
    present, record, report = resolve_splits(tmp_path, SUBJECTS[:10], OPTIONS)
    write_split_record(tmp_path, record, OPTIONS)
    assert read_split_record(tmp_path).assignment == present
    assert report[0].startswith("train: ") and "(asked 80.0 %)" in report[0]
    again, kept, report = resolve_splits(tmp_path, SUBJECTS[2:12], OPTIONS)
    assert _moved(present, again) == [] and set(kept) == set(SUBJECTS[:12])
    assert report[-1] == f"2 recorded subject(s) without runs now, kept in {SPLITS_TSV} with their split: 000, 001"


@pytest.mark.parametrize("changed, what", [
    (ShardOptions(split_ratios=(0.8, 0.1, 0.1), split_seed=4), "seed 3 -> 4"),
    (ShardOptions(split_ratios=(0.6, 0.2, 0.2), split_seed=3), "ratios 0.8 0.1 0.1 -> 0.6 0.2 0.2"),
    (ShardOptions(split_ratios=(0.8, 0.1, 0.1), split_seed=3, group_column="family"), "group_column None -> 'family'"),
])
def test_changed_split_settings_are_refused_without_resplit(tmp_path, changed, what):
    _, record, _ = resolve_splits(tmp_path, SUBJECTS[:10], OPTIONS)
    write_split_record(tmp_path, record, OPTIONS)
    with pytest.raises(ShardOptionsError, match=f"{SPLITS_TSV}: the recorded splits were made with other settings "
                                                f"\\({what}\\); .* --resplit"):
        resolve_splits(tmp_path, SUBJECTS[:10], changed)
    present, _, _ = resolve_splits(tmp_path, SUBJECTS[:10], changed, resplit=True)
    assert set(present) == set(SUBJECTS[:10])


def test_tampered_split_record_is_refused(tmp_path):
    _, record, _ = resolve_splits(tmp_path, SUBJECTS[:4], OPTIONS)
    write_split_record(tmp_path, record, OPTIONS)
    tsv = tmp_path / SPLITS_TSV
    tsv.write_text(tsv.read_text().replace("\ttrain\n", "\ttraining\n", 1))
    with pytest.raises(ShardFormatError, match=f"{SPLITS_TSV}: line \\d: split 'training', expected one of"):
        read_split_record(tmp_path)
