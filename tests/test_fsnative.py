"""fsnative input: the per-subject operator through the registration sphere, and fsnative runs end to end."""

from __future__ import annotations

import csv
import logging

import h5py
import nibabel as nib
import numpy as np
import pytest
from conftest import smooth_sphere_function

from flatprep.exceptions import SurfaceFileError
from flatprep.fsnative import build_native_operator, read_sphere
from flatprep.geometry import Mesh
from flatprep.sample.fsnative import _label_bytes, _surface_bytes, native_frames, native_meshes
from flatprep.spaces import HEMIS, fsaverage_positions, load_sphere


def _write_mesh(folder, meshes):
    spheres, masks = [], []
    for hemi in HEMIS:
        spheres.append(folder / f"{hemi}.sphere.surf.gii")
        spheres[-1].write_bytes(_surface_bytes(meshes[hemi].sphere, hemi))
        masks.append(folder / f"{hemi}.cortex.label.gii")
        masks[-1].write_bytes(_label_bytes(meshes[hemi].cortex))
    return spheres, masks


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsnative")
    meshes = native_meshes(0, 0)
    spheres, masks = _write_mesh(folder, meshes)
    smooth = np.concatenate([smooth_sphere_function(fsaverage_positions("fsaverage5", h)) for h in HEMIS])
    native = native_frames(smooth[None], meshes)
    return {"folder": folder, "meshes": meshes, "spheres": spheres, "masks": masks, "smooth": smooth,
            "native": np.concatenate([native["L"], native["R"]], axis=1)[0]}


def test_fsnative_flat_map_matches_fsaverage_on_smooth_data(coarse_grid, subject):
    op = build_native_operator(coarse_grid, subject["spheres"], cortex_masks=subject["masks"])
    assert op.matrix.shape == (coarse_grid.n_pixels, 2 * 10242)
    np.testing.assert_allclose(op.matrix.sum(axis=1), 1.0)
    native = op.project(subject["native"])
    reference = coarse_grid.operator("fsaverage5").project(subject["smooth"])
    assert np.corrcoef(native, reference)[0, 1] >= 0.99
    # The default medial wall (fsaverage's, carried through the registration) gives the same map here.
    default = build_native_operator(coarse_grid, subject["spheres"]).project(subject["native"])
    assert np.corrcoef(default, reference)[0, 1] >= 0.99


def test_fsnative_hemispheres_may_differ_in_vertex_count(coarse_grid, subject, tmp_path):
    """A right hemisphere of 40,962 vertices (fsaverage6, permuted) beside a 10,242-vertex left one."""
    rng = np.random.default_rng(0)
    base = load_sphere("fsaverage6", "R")
    order = rng.permutation(len(base.vertices))
    position = np.argsort(order)
    right = tmp_path / "rh.sphere.reg"
    nib.freesurfer.write_geometry(str(right), base.vertices[order] * 100, position[base.faces].astype(np.int32))
    op = build_native_operator(coarse_grid, (subject["spheres"][0], right))
    values = smooth_sphere_function(fsaverage_positions("fsaverage6", "R"))[order]
    data = np.concatenate([subject["native"][:10242], values])
    reference = coarse_grid.operator("fsaverage6").project(
        np.concatenate([smooth_sphere_function(fsaverage_positions("fsaverage6", h)) for h in HEMIS]))
    assert op.matrix.shape[1] == 10242 + 40962
    right_pixels = coarse_grid.pixel_hemi == 1
    assert np.corrcoef(op.project(data)[right_pixels], reference[right_pixels])[0, 1] >= 0.999


def test_fsnative_operator_is_cached_by_sphere_content(coarse_grid, subject, tmp_path):
    first = build_native_operator(coarse_grid, subject["spheres"], cortex_masks=subject["masks"])
    copies = []
    for path in subject["spheres"]:
        copies.append(tmp_path / path.name)
        copies[-1].write_bytes(path.read_bytes())
    again = build_native_operator(coarse_grid, copies, cortex_masks=subject["masks"])
    assert again.key == first.key
    other = native_meshes(0, 1)
    spheres, _ = _write_mesh(tmp_path, other)
    assert build_native_operator(coarse_grid, spheres).key != first.key


def test_missing_or_wrong_sphere_fails_naming_the_file(tmp_path):
    missing = tmp_path / "sub-01_hemi-L_space-fsaverage_desc-reg_sphere.surf.gii"
    with pytest.raises(SurfaceFileError, match=r"sub-01_hemi-L_space-fsaverage_desc-reg_sphere.surf.gii: "
                                               r"registration sphere not found; fsnative runs need"):
        read_sphere(missing)
    flat = tmp_path / "lh.white"
    vertices = np.random.default_rng(0).normal(size=(20, 3)) * [1, 5, 10]
    nib.freesurfer.write_geometry(str(flat), vertices, np.array([[0, 1, 2]], np.int32))
    with pytest.raises(SurfaceFileError, match="lh.white: not a sphere"):
        read_sphere(flat)
    assert isinstance(read_sphere(_sphere_file(tmp_path)), Mesh)


def _sphere_file(folder):
    path = folder / "lh.sphere.reg"
    sphere = load_sphere("fsaverage5", "L")
    nib.freesurfer.write_geometry(str(path), sphere.vertices * 100, sphere.faces.astype(np.int32))
    return path


@pytest.fixture(scope="module")
def native_sample(tmp_path_factory):
    from flatprep.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("native") / "bids"
    write_sample_dataset(root, n_subjects=2, duration=40.0, seed=5, tasks=("rest",),
                         spaces=("fsaverage5", "fsnative"))
    return root


def _participant(source, out, *extra):
    from flatprep.pipelines.cli.run import main

    return main([str(source), str(out), "participant", "--pixel-size", "2.4", "--no-figures", *extra])


def test_fsnative_run_gives_the_flat_map_of_the_same_data_on_fsaverage(native_sample, tmp_path):
    assert _participant(native_sample, tmp_path / "native", "--space", "fsnative") == 0
    assert _participant(native_sample, tmp_path / "fsavg", "--space", "fsaverage5") == 0
    for subject in ("01", "02"):
        stem = f"sub-{subject}/func/sub-{subject}_task-rest_space-"
        with h5py.File(tmp_path / "native" / f"{stem}fsnative_desc-flat_bold.h5") as a, \
                h5py.File(tmp_path / "fsavg" / f"{stem}fsaverage5_desc-flat_bold.h5") as b:
            mean_r = np.corrcoef(a["mean"][()], b["mean"][()])[0, 1]
            frames_a, frames_b = a["frames"][()].astype(np.float64), b["frames"][()].astype(np.float64)
        frame_r = np.corrcoef(frames_a.ravel(), frames_b.ravel())[0, 1]
        assert mean_r >= 0.99 and frame_r >= 0.99, (subject, mean_r, frame_r)
    from flatprep.pipelines.cli.run import main

    assert main([str(native_sample), str(tmp_path / "native"), "group", "--split-ratios", "0.5", "0.5", "0"]) == 0
    assert "sub-02_task-rest_space-fsnative" in (tmp_path / "native" / "shards" / "manifest.tsv").read_text()


def test_fsnative_run_without_its_sphere_fails_alone_naming_the_file(native_sample, tmp_path, caplog):
    import shutil

    copy = tmp_path / "bids"
    shutil.copytree(native_sample, copy)
    sphere = copy / "derivatives/fmriprep/sub-02/anat/sub-02_hemi-R_space-fsaverage_desc-reg_sphere.surf.gii"
    sphere.unlink()
    caplog.set_level(logging.ERROR)
    assert _participant(copy, tmp_path / "out", "--space", "fsnative") == 1
    with (tmp_path / "out" / "runs.tsv").open() as handle:
        rows = {row["subject"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert rows["01"]["status"] == "done" and rows["02"]["status"] == "failed"
    assert rows["02"]["error"].startswith(f"{sphere}: registration sphere not found")
