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
