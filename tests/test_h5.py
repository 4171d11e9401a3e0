import numpy as np
import pytest

from flatprep.exceptions import ShardFormatError
from flatprep.h5 import RunFileError, read_run, read_run_attrs, validate_run, write_run


def _write(path, grid, n_frames=20, rng=None):
    rng = rng or np.random.default_rng(0)
    frames = rng.normal(size=(n_frames, grid.n_pixels)).astype(np.float16)
    write_run(path, frames=frames, mean=np.ones(grid.n_pixels), std=np.ones(grid.n_pixels), mask=grid.mask,
              attrs={"tr_in": 2.0, "tr_out": 1.0, "entities": {"subject": "01", "task": "rest"},
                     "sources": [{"path": "a.func.gii", "sha256": "0" * 64}], "clean_options": {"detrend": "linear"},
                     "inputs_key": "abc"},
              grid_attrs=grid.describe() | {"space": "fsLR", "operator_key": "k", "shape": list(grid.shape)})
    return frames


def test_run_file_round_trip(coarse_grid, tmp_path, rng):
    path = tmp_path / "sub-01_task-rest_desc-flat_bold.h5"
    frames = _write(path, coarse_grid, rng=rng)
    assert validate_run(path) == []
    run = read_run(path)
    np.testing.assert_array_equal(run.frames, frames)
    assert np.array_equal(run.mask, coarse_grid.mask)
    assert run.attrs["entities"] == {"subject": "01", "task": "rest"}
    assert run.attrs["format"] == "flatprep-run" and run.grid["space"] == "fsLR"
    attrs, grid = read_run_attrs(path)
    assert attrs["inputs_key"] == "abc" and grid["shape"] == [112, 288]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_write_run_refuses_wrong_dtype_and_shape(coarse_grid, tmp_path):
    with pytest.raises(RunFileError, match="frames must be float16"):
        write_run(tmp_path / "x.h5", frames=np.zeros((2, coarse_grid.n_pixels)), mean=0, std=0,
                  mask=coarse_grid.mask, attrs={}, grid_attrs={})
    with pytest.raises(RunFileError, match=r"frames of shape \(2, 5\) do not match"):
        write_run(tmp_path / "x.h5", frames=np.zeros((2, 5), np.float16), mean=0, std=0,
                  mask=coarse_grid.mask, attrs={}, grid_attrs={})
    assert not list(tmp_path.iterdir())


def test_validate_run_catches_truncation_and_missing_files(coarse_grid, tmp_path):
    path = tmp_path / "run.h5"
    _write(path, coarse_grid)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    problems = validate_run(path)
    assert problems and "run.h5" in problems[0]
    with pytest.raises(RunFileError, match="run.h5"):
        read_run(path)
    assert validate_run(tmp_path / "gone.h5") == [f"{tmp_path / 'gone.h5'}: missing"]


def test_open_h5_refuses_external_links_and_virtual_datasets(tmp_path):
    import h5py

    from flatprep.h5 import open_h5

    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as handle:
        handle["data"] = np.arange(4.0)
    linked = tmp_path / "linked.h5"
    with h5py.File(linked, "w") as handle:
        handle.create_group("grid")["mask"] = np.ones((2, 2), np.uint8)
        handle["grid/outside"] = h5py.ExternalLink(str(secret), "/data")
    with pytest.raises(RunFileError, match=r"linked.h5: /grid/outside is an external link to .*secret.h5:/data"):
        open_h5(linked)

    layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(secret), "data", shape=(4,))
    virtual = tmp_path / "virtual.h5"
    with h5py.File(virtual, "w") as handle:
        handle.create_virtual_dataset("frames", layout)
    with pytest.raises(ShardFormatError, match=r"virtual.h5: /frames is a virtual dataset"):
        open_h5(virtual, error=ShardFormatError)

    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as handle:
        handle.create_group("grid")["mask"] = np.ones((2, 2), np.uint8)
        handle["alias"] = h5py.SoftLink("/grid/mask")
    with open_h5(plain) as handle:
        assert handle["alias"].shape == (2, 2)
    with pytest.raises(RunFileError, match="missing.h5: not a readable HDF5 file"):
        open_h5(tmp_path / "missing.h5")


# --------------------------------------------------------------------------- checksums and faults


def test_content_checksum_is_stored_and_verified(tmp_path):
    import h5py

    from builders import flip_bytes_in_frames, write_flat_run

    from flatprep.h5 import CHECKSUM_ATTR, FORMAT_VERSION, content_sha256

    path = tmp_path / "run.h5"
    frames = write_flat_run(path)
    with h5py.File(path) as handle:
        stored = handle.attrs[CHECKSUM_ATTR]
        assert handle.attrs["format_version"] == FORMAT_VERSION == 2
        assert content_sha256({n: handle[n] for n in ("frames", "mean", "std", "grid/mask")}) == stored
    np.testing.assert_array_equal(read_run(path).frames, frames)

    flip_bytes_in_frames(path)
    with h5py.File(path) as handle:  # still a readable HDF5 file: only the data changed
        assert not np.array_equal(handle["frames"][()], frames)
    assert validate_run(path, check_values=False) == [
        f"{path}: content checksum mismatch (its data changed after it was written, or the file is corrupt); "
        "rerun the participant level for this run"]
    with pytest.raises(RunFileError, match="run.h5: content checksum mismatch"):
        read_run(path)


def test_version_1_files_are_read_with_a_warning_but_never_verified(tmp_path):
    import h5py

    from builders import write_flat_run

    path = tmp_path / "old.h5"
    frames = write_flat_run(path)
    with h5py.File(path, "r+") as handle:  # what flatprep wrote before checksums
        del handle.attrs["content_sha256"]
        handle.attrs["format_version"] = 1
    assert validate_run(path) == [f"{path}: format version 1 has no content checksum, so its data cannot be "
                                  "verified; rerun the participant level to rewrite it"]
    with pytest.warns(UserWarning, match="old.h5: format version 1 has no content checksum"):
        np.testing.assert_array_equal(read_run(path).frames, frames)


def test_disk_full_while_writing_a_run_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import flatprep.h5
    from builders import DiskFull, write_flat_run

    from flatprep.exceptions import OutputWriteError

    disk = DiskFull(budget=20_000)
    monkeypatch.setattr(flatprep.h5, "open", disk, raising=False)
    path = tmp_path / "sub-01_desc-flat_bold.h5"
    with pytest.raises(OutputWriteError, match=r"sub-01_desc-flat_bold.h5: cannot write \(No space left on device\)"):
        write_flat_run(path, n_frames=200)
    assert disk.calls and not list(tmp_path.iterdir())  # no partial file, no temporary


_CRASH_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from builders import write_flat_run
from flatprep.exceptions import OutputWriteError
try:
    write_flat_run({path!r}, n_frames=400, shape=(64, 128))
except OutputWriteError as err:
    print(err)
"""


def _write_in_subprocess(path):
    import subprocess
    import sys
    from pathlib import Path

    script = _CRASH_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_a_full_tmpfs_ends_in_one_line_not_a_crash(tmp_path):
    """A real full disk: HDF5 used to kill the process with SIGSEGV when it could not close the file."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        done = _write_in_subprocess(disk / "run.h5")
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == f"{disk / 'run.h5'}: cannot write (No space left on device); free some space and rerun"
        assert not list(disk.iterdir())
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_read_run_refuses_a_run_file_with_an_external_link(tmp_path):
    """What flatprep-embed reads: a per-run file must not pull data from another file."""
    import h5py

    from builders import write_flat_run

    path = tmp_path / "run.h5"
    write_flat_run(path)
    with h5py.File(tmp_path / "secret.h5", "w") as handle:
        handle["data"] = np.zeros(8, np.float32)
    with h5py.File(path, "r+") as handle:
        del handle["std"]
        handle["std"] = h5py.ExternalLink(str(tmp_path / "secret.h5"), "/data")
    with pytest.raises(RunFileError, match=r"run.h5: /std is an external link to .*secret.h5:/data"):
        read_run(path)
    assert "/std is an external link" in validate_run(path)[0]
    with pytest.raises(RunFileError, match="/std is an external link"):
        read_run_attrs(path)


def test_write_run_blocks_writes_the_same_bytes_in_one_pass(coarse_grid, tmp_path, rng):
    from flatprep.h5 import content_sha256, write_run_blocks

    frames = rng.normal(size=(37, coarse_grid.n_pixels)).astype(np.float16)
    np.save(tmp_path / "frames.npy", frames)
    mapped = np.load(tmp_path / "frames.npy", mmap_mode="r")
    kwargs = {"mean": rng.uniform(500, 1000, coarse_grid.n_pixels), "std": np.ones(coarse_grid.n_pixels),
              "mask": coarse_grid.mask, "attrs": {"inputs_key": "abc"}, "grid_attrs": {"space": "fsLR"}}
    whole, mapped_file, blocks = tmp_path / "whole.h5", tmp_path / "mapped.h5", tmp_path / "blocks.h5"
    write_run(whole, frames=frames, clip_frames=16, **kwargs)
    write_run(mapped_file, frames=mapped, clip_frames=16, **kwargs)
    # Blocks that do not follow the chunks (7 rows against 16-frame chunks) still give the same file.
    write_run_blocks(blocks, (frames[i:i + 7] for i in range(0, 37, 7)), shape=frames.shape, clip_frames=16,
                     **kwargs)
    assert whole.read_bytes() == mapped_file.read_bytes() == blocks.read_bytes()
    attrs, _ = read_run_attrs(blocks)
    assert attrs["content_sha256"] == content_sha256({
        "frames": frames, "mean": kwargs["mean"].astype(np.float32), "std": kwargs["std"].astype(np.float32),
        "grid/mask": coarse_grid.mask.astype(np.uint8)})


def test_write_run_blocks_refuses_blocks_that_do_not_fit(coarse_grid, tmp_path):
    from flatprep.h5 import write_run_blocks

    n = coarse_grid.n_pixels
    kwargs = {"shape": (4, n), "mean": np.ones(n), "std": np.ones(n), "mask": coarse_grid.mask, "attrs": {},
              "grid_attrs": {}}
    with pytest.raises(RunFileError, match=r"x.h5: 2 frames written, 4 expected"):
        write_run_blocks(tmp_path / "x.h5", [np.zeros((2, n), np.float16)], **kwargs)
    with pytest.raises(RunFileError, match=r"x.h5: a block of shape \(2, 5\) from frame 0 does not fit"):
        write_run_blocks(tmp_path / "x.h5", [np.zeros((2, 5), np.float16)], **kwargs)
    with pytest.raises(RunFileError, match="x.h5: frames must be float16, got float32"):
        write_run_blocks(tmp_path / "x.h5", [np.zeros((4, n), np.float32)], **kwargs)
    assert not list(tmp_path.iterdir())  # nothing half-written
