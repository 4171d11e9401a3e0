"""Torch datasets over training shards: content, order, exactly-once, corruption."""

import csv
import json
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from flatprep.learn.data import (DenseCollate, FlatClipsDataset, FlatClipsStream, ShardIndex, _buffer_shuffle,
                                 normalize_frames, prepare_clips)
from flatprep.exceptions import ShardFormatError

T = 4  # clip_frames of the fixture
H, W = 32, 64
COLUMNS = ["run", "shard", "offset", "frames", "clips", "subject", "session", "task", "acquisition", "run_number",
           "space", "tr", "split", "group", "source", "source_sha256"]
# (subject, session, task, run number, frames, split, shard): lengths with and without a remainder, a run too
# short for one clip, runs that end a shard exactly and with padding, four subjects in three splits.
RUNS = [
    ("01", "a", "rest", "1", 10, "train", 0),
    ("01", "a", "rest", "2", 8, "train", 0),
    ("01", "a", "motor", None, 13, "train", 0),
    ("02", None, "rest", "1", 3, "train", 1),
    ("02", None, "rest", "2", 61, "train", 1),
    ("03", None, "rest", None, 12, "val", 1),
    ("03", None, "motor", None, 7, "val", 2),
    ("04", None, "rest", None, 9, "test", 2),
]
N_CLIPS = sum(r[4] // T for r in RUNS)


def _mask():
    y, x = np.mgrid[:H, :W]
    return ((y - 15.5) / 14) ** 2 + ((x - 31.5) / 30) ** 2 <= 1


def _label(subject, session, task, run):
    parts = [f"sub-{subject}", session and f"ses-{session}", f"task-{task}", run and f"run-{run}", "space-fsLR"]
    return "_".join(p for p in parts if p)


def write_shards(root, rng, *, runs=RUNS):
    """Shards, manifest.tsv and manifest.json following docs/formats.md, written with plain h5py.

    Frames are random float16, except pixel 0, which holds ``100 * run + frame``
    (exact in float16) so that a clip names its run and first frame. Returns
    {run label: frames (n_frames, P) float16}.
    """
    mask = _mask()
    n_pixels = int(mask.sum())
    shard_dir = root / "shards"
    shard_dir.mkdir(parents=True)
    grid = {"shape": [H, W], "n_valid_pixels": n_pixels, "pixel_size_mm": 2.4, "template": "test"}
    reference, rows, shards = {}, [], []
    for shard in sorted({r[6] for r in runs}):
        name = f"shard-{shard:05d}_flatclips.h5"
        chosen = [(i, r) for i, r in enumerate(runs) if r[6] == shard]
        total = sum(-(-r[4] // T) * T for _, r in chosen)
        with h5py.File(shard_dir / name, "w", libver=("earliest", "v114")) as f:
            dset = f.create_dataset("frames", shape=(total, n_pixels), dtype=np.float16, chunks=(T, n_pixels),
                                    fillvalue=0)
            offset = 0
            for i, (subject, session, task, run, n_frames, split, _) in chosen:
                data = rng.standard_normal((n_frames, n_pixels)).astype(np.float16)
                data[:, 0] = 100 * i + np.arange(n_frames)
                dset[offset:offset + n_frames] = data
                label = _label(subject, session, task, run)
                reference[label] = data
                rows.append({"run": label, "shard": name, "offset": offset, "frames": n_frames,
                             "clips": n_frames // T, "subject": subject, "session": session, "task": task,
                             "acquisition": None, "run_number": run, "space": "fsLR", "tr": 1.0, "split": split,
                             "group": f"sub-{subject}", "source": f"sub-{subject}/func/{label}_desc-flat_bold.h5",
                             "source_sha256": "0" * 64})
                offset += -(-n_frames // T) * T
            f.create_group("grid").create_dataset("mask", data=mask.astype(np.uint8))
            f.attrs.update({"format": "flatprep-shard", "format_version": 1, "flatprep_version": "0.1.0",
                            "shard": shard, "clip_frames": T, "compression": "none", "n_runs": len(chosen),
                            "grid": json.dumps(grid)})
        shards.append({"file": name, "sha256": "0" * 64, "n_runs": len(chosen), "n_frames": total,
                       "bytes": (shard_dir / name).stat().st_size})
    with (shard_dir / "manifest.tsv").open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["n/a" if row[c] is None else row[c] for c in COLUMNS])
    (shard_dir / "manifest.json").write_text(json.dumps({
        "format": "flatprep-manifest", "format_version": 1, "flatprep_version": "0.1.0", "clip_frames": T,
        "compression": "none", "grid": grid,
        "splits": {"ratios": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 0, "group_column": None},
        "shards": shards,
    }))
    return reference


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards") / "out"
    reference = write_shards(root, np.random.default_rng(5))
    return root, reference


@pytest.fixture
def shard_copy(shards, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(shards[0], root)
    return root


def _check_item(item, reference, *, normalized=False):
    """Packed items: shape, dtype and the exact stored frames of the run. Dense items (DenseCollate):
    shape, dtype, zero background and (unless normalised) the exact frames of the run."""
    if "values" in item:
        values, meta = item["values"], item["meta"]
        assert values.shape == (T, int(_mask().sum())) and values.dtype == torch.float16
        frames = reference[meta["run"]]
        np.testing.assert_array_equal(values.numpy(), frames[meta["frame"]:meta["frame"] + T])
        return
    clip, mask, meta = item["clip"], item["mask"], item["meta"]
    assert clip.shape == (1, T, H, W) and clip.dtype == torch.float32
    assert mask.shape == (H, W) and mask.dtype == torch.bool
    assert torch.equal(mask, torch.from_numpy(_mask()))
    assert torch.all(clip[0][:, ~mask] == 0)
    frames = reference[meta["run"]]
    assert 0 <= meta["frame"] and meta["frame"] + T <= frames.shape[0]
    if not normalized:
        expected = frames[meta["frame"]:meta["frame"] + T].astype(np.float32)
        np.testing.assert_array_equal(clip[0][:, mask].numpy(), expected)


def _dense(dataset, i, **options):
    """Item ``i`` as a dense clip through the CPU collate: clip (1, T, H, W), mask (H, W), meta."""
    batch = DenseCollate(dataset.pixels, **options)([dataset[i]])
    return {"clip": batch["clip"][0], "mask": batch["mask"][0], "meta": dataset[i]["meta"]}


def _ids(loader):
    return [int(i) for batch in loader for i in batch["meta"]["index"]]


# --------------------------------------------------------------------------- index and map-style


def test_shard_index_lists_aligned_clips(shards):
    root, reference = shards
    index = ShardIndex.read(root)
    assert len(index) == N_CLIPS
    assert index.clip_frames == T and index.compression == "none"
    # The 3-frame run has no clip; every clip is aligned and inside its run.
    assert not any(r["frames"] < T for r in index.runs)
    for i in range(len(index)):
        run = index.runs[index.clip_run[i]]
        assert (index.clip_start[i] - run["offset"]) % T == 0
        assert index.clip_start[i] + T <= run["offset"] + run["frames"]
        assert index.clip_slack[i] == run["frames"] % T
        assert index.shard_files[index.clip_shard[i]] == run["shard"]
    assert pickle.loads(pickle.dumps(index)).clip_start.tolist() == index.clip_start.tolist()


def test_dataset_items_have_the_right_frames_and_meta(shards):
    root, reference = shards
    dataset = FlatClipsDataset(root)
    assert len(dataset) == N_CLIPS
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        _check_item(item, reference)
        meta = item["meta"]
        # Pixel 0 names the run and the first frame: clip identity across shard boundaries.
        run_row = [_label(*r[:4]) for r in RUNS].index(meta["run"])
        assert item["values"][0, 0] == 100 * run_row + meta["frame"]
        _check_item(_dense(dataset, i), reference)              # the dense collate puts them on the grid
        assert meta["index"] == i and meta["frame"] % T == 0
        seen.add((meta["run"], meta["frame"]))
    assert len(seen) == N_CLIPS
    meta = dataset[0]["meta"]
    assert meta == {"run": "sub-01_ses-a_task-rest_run-1_space-fsLR", "subject": "01", "session": "a",
                    "task": "rest", "acquisition": "n/a", "run_number": "1", "space": "fsLR", "split": "train",
                    "group": "sub-01", "tr": 1.0, "shard": "shard-00000_flatclips.h5", "start": 0, "frame": 0,
                    "index": 0}
    assert dataset[-1]["meta"]["index"] == N_CLIPS - 1
    with pytest.raises(IndexError, match=f"clip index {N_CLIPS} out of range"):
        dataset[N_CLIPS]


def test_dataset_split_subject_and_task_filters(shards):
    root, _ = shards
    val = FlatClipsDataset(root, split="val")
    assert len(val) == (12 // T + 7 // T)
    assert {val[i]["meta"]["subject"] for i in range(len(val))} == {"03"}
    assert len(FlatClipsDataset(root, split=["val", "test"])) == len(val) + 9 // T
    assert len(FlatClipsDataset(root, subjects=["sub-01"], tasks=["motor"])) == 13 // T
    with pytest.raises(ValueError, match="split must be among"):
        FlatClipsDataset(root, split="training")
    with pytest.raises(ValueError, match="no clip matches"):
        FlatClipsDataset(root, subjects=["99"])


def test_frame_normalization_and_clipping(shards):
    root, reference = shards
    mask = torch.from_numpy(_mask())
    dataset = FlatClipsDataset(root)
    for i in (0, 5, N_CLIPS - 1):
        item = _dense(dataset, i, normalize="frame")
        _check_item(item, reference, normalized=True)
        valid = item["clip"][0][:, mask].double()               # (T, P)
        np.testing.assert_allclose(valid.mean(1).numpy(), 0, atol=1e-5)
        np.testing.assert_allclose(valid.std(1, unbiased=False).numpy(), 1, atol=1e-4)
    clipped = _dense(dataset, 5, normalize="frame", clip_value=1.5)["clip"][0]
    assert clipped.abs().max() == 1.5 and torch.all(clipped[:, ~mask] == 0)
    expected = _dense(dataset, 5, normalize="frame")["clip"][0].clamp(-1.5, 1.5)
    torch.testing.assert_close(clipped, expected)
    # Clipping alone acts on the stored values (pixel 0 holds 100 * run + frame).
    raw_clipped = _dense(dataset, 5, clip_value=3)["clip"][0]
    assert raw_clipped[:, mask].max() == 3 and torch.all(raw_clipped[:, ~mask] == 0)
    # On the device path: the same images from a batch of packed values, the batch left as it was.
    values = torch.stack([dataset[i]["values"] for i in (5, 6)])
    kept = values.clone()
    images = prepare_clips(values, dataset.pixels, normalize="frame", clip_value=1.5)
    assert images.shape == (2, 1, T, H, W) and torch.equal(values, kept)
    torch.testing.assert_close(images[0, 0], clipped)
    with pytest.raises(ValueError, match="normalize must be one of"):
        DenseCollate(dataset.pixels, normalize="run")


def test_normalize_frames_is_a_per_frame_z_score(rng):
    values = torch.from_numpy(rng.normal(3.0, 2.0, size=(5, 1000)).astype(np.float32))
    expected = (values - values.mean(1, keepdim=True)) / values.std(1, unbiased=False, keepdim=True)
    out = normalize_frames(values.clone(), "frame", None)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normalize_frames(values.clone(), "frame", 1.0), expected.clamp(-1, 1),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(normalize_frames(values.clone()), values)
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize_frames(values, "zscore")


def test_constant_frame_normalizes_to_zero(tmp_path):
    runs = [("01", None, "rest", None, 8, "train", 0)]
    reference = write_shards(tmp_path / "out", np.random.default_rng(0), runs=runs)
    with h5py.File(tmp_path / "out" / "shards" / "shard-00000_flatclips.h5", "r+") as f:
        f["frames"][1] = 2.0                                    # frames with zero variance
        f["frames"][2] = 0.3                                    # (whose mean is not exact in float32)
        f["frames"][3] = 0.0
    item = _dense(FlatClipsDataset(tmp_path / "out"), 0, normalize="frame")
    assert torch.all(item["clip"][0, 1:] == 0)
    valid = item["clip"][0, 0][torch.from_numpy(_mask())]
    assert abs(float(valid.std(unbiased=False)) - 1) < 1e-4 and reference


def test_temporal_offsets_stay_inside_the_run(shards):
    root, reference = shards
    dataset = FlatClipsDataset(root, temporal_offset=True, seed=3)
    index = dataset.index
    by_epoch = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        starts = []
        for i in range(len(dataset)):
            item = dataset[i]
            _check_item(item, reference)                         # exact frames, inside the run
            aligned = index.clip_start[i]
            assert aligned <= item["meta"]["start"] <= aligned + index.clip_slack[i]
            starts.append(item["meta"]["start"])
        by_epoch.append(starts)
    assert by_epoch[0] != by_epoch[1]                            # new offsets each epoch
    dataset.set_epoch(0)
    assert [dataset[i]["meta"]["start"] for i in range(len(dataset))] == by_epoch[0]
    # Runs without slack stay aligned.
    no_slack = np.flatnonzero(index.clip_slack == 0)
    assert all(by_epoch[e][i] == index.clip_start[i] for e in range(4) for i in no_slack)


def test_pickling_drops_h5py_handles(shards):
    root, reference = shards
    dataset = FlatClipsDataset(root)
    dataset[3]
    assert dataset.reader._pfiles                               # opened lazily on first read
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.reader._pfiles == {} and clone.reader._pmask is None
    _check_item(clone[3], reference)
    stream = FlatClipsStream(root)
    next(iter(stream))
    assert pickle.loads(pickle.dumps(stream)).clips.reader._pfiles == {}
    fresh = FlatClipsDataset(root)                              # __init__ opens no shard
    assert fresh.reader._pfiles == {}
    dataset.close()
    assert dataset.reader._pfiles == {}
    _check_item(dataset[3], reference)                          # reopens


def test_dataset_through_dataloader_workers(shards):
    root, reference = shards
    dataset = FlatClipsDataset(root)
    dataset[0]                                                  # parent holds handles before the fork
    assert [b["values"].shape for b in DataLoader(dataset, batch_size=5)][0] == (5, T, int(_mask().sum()))
    loader = DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context="fork",
                        collate_fn=DenseCollate(dataset.pixels))   # dense images made in the workers
    batches = list(loader)
    assert [int(i) for b in batches for i in b["meta"]["index"]] == list(range(N_CLIPS))
    assert batches[0]["clip"].shape == (5, 1, T, H, W) and batches[0]["mask"].shape == (5, H, W)
    for b in batches:
        for clip, mask, frame, run in zip(b["clip"], b["mask"], b["meta"]["frame"], b["meta"]["run"]):
            _check_item({"clip": clip, "mask": mask, "meta": {"frame": int(frame), "run": run}}, reference)


# --------------------------------------------------------------------------- stream


@pytest.mark.parametrize("drop_uneven", [False, True])
def test_stream_each_clip_once_over_two_workers_and_two_ranks(shards, drop_uneven):
    root, _ = shards
    ids = []
    for rank in range(2):
        stream = FlatClipsStream(root, rank=rank, world_size=2, shuffle_buffer=4, drop_uneven=drop_uneven, seed=1)
        loader = DataLoader(stream, batch_size=3, num_workers=2, multiprocessing_context="fork")
        rank_ids = _ids(loader)
        assert len(rank_ids) == len(stream)
        ids += rank_ids
    if drop_uneven:
        assert len(ids) == N_CLIPS - N_CLIPS % 2 and len(set(ids)) == len(ids)
        assert len(stream) == N_CLIPS // 2
    else:
        assert sorted(ids) == list(range(N_CLIPS))


def test_stream_spawn_workers_and_persistent_epochs(shards):
    root, _ = shards
    ids = {0: [], 1: []}
    for rank in range(2):
        stream = FlatClipsStream(root, rank=rank, world_size=2, shuffle_buffer=4, seed=1)
        loader = DataLoader(stream, batch_size=4, num_workers=2, multiprocessing_context="spawn",
                            persistent_workers=True)
        for epoch in (0, 1):
            stream.set_epoch(epoch)                              # must reach the persistent workers
            ids[epoch] += [(rank, i) for i in _ids(loader)]
        # The same order as in-process iteration over the same worker shares.
        for epoch in (0, 1):
            expected = [stream.worker_clips(w, 2, epoch) for w in (0, 1)]
            flat = [int(i) for b in range(max(map(len, expected))) for e in expected for i in e[4 * b:4 * b + 4]]
            assert [i for r, i in ids[epoch] if r == rank] == flat
    for epoch in (0, 1):
        assert sorted(i for _, i in ids[epoch]) == list(range(N_CLIPS))
    assert ids[0] != ids[1]


def test_stream_order_depends_on_seed_and_epoch_only(shards):
    root, reference = shards

    def order(epoch, seed=0, **kwargs):
        stream = FlatClipsStream(root, seed=seed, shuffle_buffer=8, **kwargs)
        stream.set_epoch(epoch)
        return [item["meta"]["index"] for item in stream]

    first = order(0)
    assert sorted(first) == list(range(N_CLIPS))
    assert _ids(DataLoader(FlatClipsStream(root, shuffle_buffer=8), batch_size=4)) == first  # num_workers=0
    assert order(0) == first
    assert order(1) != first and sorted(order(1)) == sorted(first)
    assert order(0, seed=1) != first
    # Without shuffling: (shard, start) order, every clip once.
    plain = order(0, shuffle=False)
    stream = FlatClipsStream(root, shuffle=False)
    keys = [(it["meta"]["shard"], it["meta"]["start"]) for it in stream]
    assert keys == sorted(keys) and sorted(plain) == list(range(N_CLIPS))
    # Items of the stream are those of the map-style dataset.
    dataset = FlatClipsDataset(root)
    for item in FlatClipsStream(root, shuffle_buffer=8):
        _check_item(item, reference)
        assert torch.equal(item["values"], dataset[item["meta"]["index"]]["values"])


def test_stream_with_temporal_offsets_matches_dataset(shards):
    root, reference = shards
    stream = FlatClipsStream(root, temporal_offset=True, seed=2)
    dataset = FlatClipsDataset(root, temporal_offset=True, seed=2)
    stream.set_epoch(3)
    dataset.set_epoch(3)
    for item in stream:
        _check_item(item, reference)
        assert item["meta"]["start"] == dataset[item["meta"]["index"]]["meta"]["start"]


def test_worker_shares_read_their_shards_in_order(shards):
    root, _ = shards
    stream = FlatClipsStream(root, shuffle_buffer=0, rank=1, world_size=2)
    index = stream.index
    shares = [stream.worker_clips(w, 3) for w in range(3)]
    for share in shares:
        keys = list(zip(index.clip_shard[share], index.clip_start[share]))
        assert keys == sorted(keys)
    assert sorted(np.concatenate(shares).tolist()) == sorted(stream.rank_clips().tolist())


def test_buffer_shuffle_emits_a_permutation():
    rng = np.random.default_rng(0)
    items = np.arange(100)
    for size in (2, 10, 100, 500):
        out = _buffer_shuffle(items, size, rng)
        assert sorted(out.tolist()) == items.tolist() and out.tolist() != items.tolist()
    # A small buffer keeps items near their place.
    out = _buffer_shuffle(items, 4, rng)
    assert np.all(np.arange(100) - np.argsort(out) < 100) and np.argsort(out)[:4].max() < 50


def test_stream_rank_arguments_are_checked(shards):
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        FlatClipsStream(shards[0], rank=2, world_size=2)
    with pytest.raises(ValueError, match="give both rank and world_size"):
        FlatClipsStream(shards[0], rank=1)


# --------------------------------------------------------------------------- bad shards


def test_missing_manifest_shard_or_column_raises(shard_copy):
    shard_dir = shard_copy / "shards"
    (shard_dir / "shard-00002_flatclips.h5").unlink()
    with pytest.raises(ShardFormatError, match="shard-00002_flatclips.h5: missing"):
        FlatClipsDataset(shard_copy)
    assert len(FlatClipsDataset(shard_copy, split="train")) > 0  # runs of other shards only
    tsv = shard_dir / "manifest.tsv"
    tsv.write_text(tsv.read_text().replace("\tclips\t", "\tn_clips\t"))
    with pytest.raises(ShardFormatError, match=r"manifest.tsv: missing columns \['clips'\]"):
        FlatClipsDataset(shard_copy)
    tsv.unlink()
    with pytest.raises(ShardFormatError, match="manifest.tsv: missing"):
        FlatClipsStream(shard_copy)


def test_inconsistent_manifest_row_raises(shard_copy):
    tsv = shard_copy / "shards" / "manifest.tsv"
    lines = tsv.read_text().splitlines()
    cells = lines[1].split("\t")
    cells[4] = "7"                                              # clips
    tsv.write_text("\n".join([lines[0], "\t".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(ShardFormatError, match=r"line 2 .*7 clips for 10 frames, expected .* = 2"):
        FlatClipsDataset(shard_copy)


@pytest.mark.parametrize("damage", ["truncate", "header", "nan", "clip_frames"])
def test_corrupt_shard_raises_naming_the_shard(shard_copy, damage):
    path = shard_copy / "shards" / "shard-00001_flatclips.h5"
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        reason = "not a readable HDF5 file"
    elif damage == "header":
        data = bytearray(path.read_bytes())
        data[:8] = b"\x00" * 8                                   # the HDF5 signature
        path.write_bytes(bytes(data))
        reason = "not a readable HDF5 file"
    elif damage == "nan":
        with h5py.File(path, "r+") as f:
            f["frames"][20, 5] = np.nan
        reason = "NaN or infinite"
    else:
        with h5py.File(path, "r+") as f:
            f.attrs["clip_frames"] = 8
        reason = "clip_frames 8 differs"
    dataset = FlatClipsDataset(shard_copy)                      # opens nothing yet
    in_shard_1 = [i for i in range(len(dataset)) if dataset.index.shard_files[dataset.index.clip_shard[i]]
                  == path.name]
    with pytest.raises(ShardFormatError, match=f"shard-00001_flatclips.h5.*{reason}"):
        for i in in_shard_1:
            dataset[i]
    dataset[0]                                                  # other shards still read


def test_corrupt_shard_error_reaches_the_main_process(shard_copy):
    path = shard_copy / "shards" / "shard-00000_flatclips.h5"
    path.write_bytes(path.read_bytes()[:1000])
    loader = DataLoader(FlatClipsStream(shard_copy), batch_size=2, num_workers=1, multiprocessing_context="fork")
    with pytest.raises(ShardFormatError, match="shard-00000_flatclips.h5: not a readable HDF5 file"):
        list(loader)


# --------------------------------------------------------------------------- the real writer


def test_reads_shards_from_the_group_level_writer(tmp_path):
    from flatprep.h5 import write_run
    from flatprep.shards import (ShardOptions, assign_splits, collect_runs, manifest_rows, plan_shards, shard_name,
                                 write_manifest, write_shard)

    rng = np.random.default_rng(1)
    mask = _mask()
    n_pixels = int(mask.sum())
    grid_attrs = {"template": "t", "template_space": "fsaverage", "template_fingerprint": "f", "pixel_size_mm": 2.4,
                  "bbox_mm": [0, 0, 1, 1], "shape": [H, W], "n_valid_pixels": n_pixels, "space": "fsLR",
                  "method": "linear", "operator_key": "k"}
    frames = {}
    for subject, n_frames in (("01", 37), ("02", 20), ("03", 17)):
        data = rng.standard_normal((n_frames, n_pixels)).astype(np.float16)
        entities = {"subject": subject, "task": "rest", "space": "fsLR"}
        path = tmp_path / f"sub-{subject}" / "func" / f"sub-{subject}_task-rest_space-fsLR_desc-flat_bold.h5"
        write_run(path, frames=data, mean=np.zeros(n_pixels), std=np.ones(n_pixels), mask=mask,
                  attrs={"tr_in": 2.0, "tr_out": 1.0, "n_timepoints_in": n_frames, "n_dropped": 0,
                         "n_zero_variance": 0, "entities": entities, "sources": [], "clean_options": {},
                         "inputs_key": "x"},
                  grid_attrs=grid_attrs)
        frames[f"sub-{subject}_task-rest_space-fsLR"] = data
    options = ShardOptions(clip_frames=T, target_bytes=30 * n_pixels * 2, split_ratios=(1.0, 0.0, 0.0))
    runs, grid, problems = collect_runs(tmp_path)
    assert not problems
    planned = plan_shards(runs, n_pixels, options)
    infos = [write_shard(tmp_path / "shards" / shard_name(k), chunk, tmp_path, grid, options, index=k)
             for k, chunk in enumerate(planned)]
    splits = assign_splits(sorted({r.entities["subject"] for r in runs}), options)
    write_manifest(tmp_path / "shards", manifest_rows(planned, infos, splits, options), infos, grid, options)

    stream = FlatClipsStream(tmp_path, temporal_offset=True, shuffle_buffer=3)
    assert len(stream.index.shard_files) >= 2
    items = list(stream)
    assert sorted(it["meta"]["index"] for it in items) == list(range((37 + 20 + 17) // T))
    for item in items:
        _check_item(item, frames)


# --------------------------------------------------------------------------- batches and dtypes


def test_stream_batches_match_items(shards):
    root, reference = shards
    dataset = FlatClipsDataset(root)
    stream = FlatClipsStream(root, batch_size=5, rank=0, world_size=1)
    loader = DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="fork")
    ids = []
    for batch in loader:
        n = batch["values"].shape[0]
        assert 1 <= n <= 5 and batch["values"].shape[1:] == (T, int(_mask().sum()))
        assert batch["values"].dtype == torch.float16 and len(batch["meta"]["run"]) == n
        assert batch["meta"]["index"].shape == (n,)
        for values, i in zip(batch["values"], batch["meta"]["index"].tolist()):
            assert torch.equal(values, dataset[i]["values"])
        ids += batch["meta"]["index"].tolist()
    assert sorted(ids) == list(range(N_CLIPS))
    sizes = [b["values"].shape[0] for b in loader]
    assert len(sizes) == len(stream) == -(-N_CLIPS // 5) and sizes.count(5) == len(sizes) - 1
    in_process = [b["meta"]["index"].tolist() for b in stream]
    assert sum(in_process, []) == list(stream.worker_clips(0, 1)) and max(map(len, in_process)) == 5
    # The dense collate converts whole batches too, in the workers.
    dense = DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="fork",
                       collate_fn=DenseCollate(stream.pixels, normalize="frame", clip_value=3))
    for batch in dense:
        assert batch["mask"].shape == (batch["clip"].shape[0], H, W)
        for clip, i in zip(batch["clip"], batch["meta"]["index"].tolist()):
            assert torch.equal(clip, _dense(dataset, i, normalize="frame", clip_value=3)["clip"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(shards, dtype):
    root, _ = shards
    dataset = FlatClipsDataset(root)
    reference = _dense(dataset, 7)["clip"]
    item = _dense(dataset, 7, dtype=dtype)
    assert item["clip"].dtype == dtype
    torch.testing.assert_close(item["clip"].float(), reference, rtol=1e-2, atol=1e-2)
    batch = DenseCollate(dataset.pixels, dtype=dtype)(next(iter(FlatClipsStream(root, batch_size=3, shuffle=False))))
    assert batch["clip"].dtype == dtype and torch.all(batch["clip"][:, :, :, ~torch.from_numpy(_mask())] == 0)
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        DenseCollate(dataset.pixels, dtype=torch.int16)


def test_manifest_mask_is_the_shards_mask(shard_copy):
    from flatprep.shards import decode_mask, encode_mask

    mask = _mask()
    np.testing.assert_array_equal(decode_mask(encode_mask(mask)), mask)
    js = shard_copy / "shards" / "manifest.json"
    description = json.loads(js.read_text())
    js.write_text(json.dumps(description | {"mask": encode_mask(mask)}))
    dataset = FlatClipsDataset(shard_copy / "shards")          # the shards folder itself
    np.testing.assert_array_equal(dataset.mask, mask)
    dataset[0]
    js.write_text(json.dumps(description | {"mask": encode_mask(~mask)}))
    with pytest.raises(ShardFormatError, match="grid/mask differs from manifest.json's mask"):
        FlatClipsDataset(shard_copy)[0]


def test_reused_batch_buffers_give_the_same_batches(shards):
    root, _ = shards
    fresh = FlatClipsStream(root, batch_size=3, shuffle_buffer=4, seed=2)
    reused = FlatClipsStream(root, batch_size=3, shuffle_buffer=4, seed=2, reuse_batches=4)
    for epoch in (0, 1):
        fresh.set_epoch(epoch)
        reused.set_epoch(epoch)
        kw = dict(batch_size=None, num_workers=2, multiprocessing_context="fork")
        expected = [(b["meta"]["index"].tolist(), b["values"].clone()) for b in DataLoader(fresh, **kw)]
        got = [(b["meta"]["index"].tolist(), b["values"].clone()) for b in DataLoader(reused, **kw)]
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert all(torch.equal(g[1], e[1]) for g, e in zip(got, expected))
    ring = [b["values"] for b in reused]                          # in process: 4 buffers, reused in turn
    assert ring[0].data_ptr() == ring[4].data_ptr() != ring[1].data_ptr()
    with pytest.raises(ValueError, match="reuse_batches must be >= 0 and needs batch_size"):
        FlatClipsStream(root, reuse_batches=2)
