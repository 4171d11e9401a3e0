"""Volume -> flat operator: ribbon sampling on real HCP surfaces, chunked reading, errors."""

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial import cKDTree

from flatprep.exceptions import VolumeFileError
from flatprep.flatmap import make_grid
from flatprep.io import open_volume_bold, read_volume_mask
from flatprep.spaces import HEMIS, load_sphere
from flatprep.volume import (
    NLIN2009C_NOTE,
    build_volume_operator,
    check_mni_affine,
    check_volume_space,
    load_ribbon_surfaces,
    prepare_volume_run,
    project_volume_frames,
)

#: fMRIPrep's 2 mm MNI152NLin6Asym grid.
AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
SHAPE = (91, 109, 91)


@pytest.fixture(scope="module")
def grid():
    return make_grid(pixel_size=2.4)


@pytest.fixture(scope="module")
def operator(grid):
    return build_volume_operator(grid, AFFINE, SHAPE)


@pytest.fixture(scope="module")
def voxel_mm():
    """(n_voxels, 3) mm of each voxel centre, Fortran order."""
    ijk = np.column_stack(np.unravel_index(np.arange(np.prod(SHAPE)), SHAPE, order="F"))
    return ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]


@pytest.fixture(scope="module")
def midthickness():
    return np.concatenate([(lambda w, p: (w.vertices + p.vertices) / 2)(*load_ribbon_surfaces(h)) for h in HEMIS])


def _write_nifti(path, data, affine=AFFINE, tr=2.0):
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    if np.ndim(data) == 4:
        image.header.set_zooms(tuple(np.abs(np.diag(affine)[:3])) + (tr,))
        image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return path


def test_operator_rows_sum_to_one_and_cover_ribbon(operator, grid):
    assert operator.matrix.shape == (grid.n_pixels, int(np.prod(SHAPE)))
    np.testing.assert_allclose(np.asarray(operator.matrix.sum(axis=1)).ravel(), 1.0, atol=1e-9)
    assert operator.matrix.min() >= 0
    # Without a mask every ribbon lies in the 2 mm field of view.
    assert operator.coverage.min() > 0.99
    assert build_volume_operator(grid, AFFINE, SHAPE).key == operator.key  # cached, same key


def test_affine_function_reproduced_between_white_and_pial(operator, grid, voxel_mm, midthickness):
    gradient = np.array([0.5, -0.3, 0.2])  # per mm
    volume = voxel_mm @ gradient + 10.0
    got = operator.project(volume)
    # Each pixel's point between white and pial: its fs_LR weights applied to the mid-thickness surface.
    point = grid.operator("fsLR").matrix @ midthickness
    error_mm = np.abs(got - (point @ gradient + 10.0)) / np.linalg.norm(gradient)
    assert np.median(error_mm) < 0.2
    assert np.percentile(error_mm, 99) < 0.5


def _smooth_fslr(rng, n_frames, sigma=0.08):
    """(n_frames, 2 * 32492) random Gaussian blobs of width ``sigma`` rad on the fs_LR sphere."""
    sphere = np.concatenate([load_sphere("fsLR", h).vertices for h in HEMIS])
    centres = rng.normal(size=(60, 3))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    blobs = np.exp(-np.arccos(np.clip(sphere @ centres.T, -1, 1)) ** 2 / (2 * sigma**2))
    return (blobs @ rng.normal(size=(60, n_frames))).T


def test_round_trip_through_ribbon_volume_matches_direct_flattening(operator, grid, voxel_mm, midthickness, rng):
    data = _smooth_fslr(rng, 8)
    # Paint each ribbon voxel with its nearest mid-thickness vertex (independent of the operator's weights).
    ribbon = np.unique(operator.matrix.indices)
    _, nearest = cKDTree(midthickness).query(voxel_mm[ribbon])
    volume = np.zeros((len(data), int(np.prod(SHAPE))), dtype=np.float32)
    volume[:, ribbon] = data[:, nearest]
    through_volume = operator.project(volume)
    direct = grid.operator("fsLR").project(data)
    r = [np.corrcoef(a, b)[0, 1] for a, b in zip(through_volume, direct)]
    assert np.median(r) > 0.97


def test_mask_lowers_coverage_and_falls_back(grid):
    mask = np.zeros(SHAPE, dtype=bool)
    mask[46:, :, :] = True  # voxel x index >= 46: x <= 0 mm, the left hemisphere only
    op = build_volume_operator(grid, AFFINE, SHAPE, mask=mask)
    left = grid.pixel_hemi == 0
    assert np.median(op.coverage[left]) > 0.95
    assert op.coverage[~left].max() < 0.05  # right ribbon outside the mask: fallback voxels
    np.testing.assert_allclose(np.asarray(op.matrix.sum(axis=1)).ravel(), 1.0, atol=1e-9)
    used = np.unique(op.matrix.indices)
    assert mask.ravel(order="F")[used].all()


def test_chunked_reading_projects_every_frame(tmp_path, operator, voxel_mm, rng):
    frames = rng.normal(100, 1, size=(7, int(np.prod(SHAPE)))).astype(np.float32)
    path = _write_nifti(tmp_path / "bold.nii.gz", frames.T.reshape(SHAPE + (7,), order="F"))
    volume = open_volume_bold(path)
    assert volume.shape == SHAPE + (7,) and volume.tr == 2.0
    got = project_volume_frames(volume, operator, chunk_frames=3)
    np.testing.assert_allclose(got, operator.project(frames), rtol=1e-5)


def test_gzipped_nifti2_run_is_read_like_nifti1(tmp_path, operator, rng):
    """The gzipped reader picks the NIfTI-2 class from the file's own header."""
    frames = rng.normal(100, 1, size=(3, int(np.prod(SHAPE)))).astype(np.float32)
    image = nib.Nifti2Image(frames.T.reshape(SHAPE + (3,), order="F"), AFFINE)
    image.header.set_zooms((2.0, 2.0, 2.0, 2.0))
    nib.save(image, str(tmp_path / "bold.nii.gz"))
    got = project_volume_frames(open_volume_bold(tmp_path / "bold.nii.gz"), operator, chunk_frames=2)
    np.testing.assert_allclose(got, operator.project(frames), rtol=1e-5)


def test_damaged_gzipped_run_names_the_file_and_frames(tmp_path, operator, rng):
    """A .nii.gz cut short, with a bad checksum or with an invalid deflate block fails with one
    error naming the file and the frames being read, not an inflater's own exception."""
    import zlib

    frames = rng.normal(100, 1, size=(6, int(np.prod(SHAPE)))).astype(np.float32)
    plain = _write_nifti(tmp_path / "plain.nii", frames.T.reshape(SHAPE + (6,), order="F")).read_bytes()
    # gzip by hand with a full flush half way, so that a new deflate block starts at a known byte
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflate.compress(plain[: len(plain) // 2])
    head += deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(plain[len(plain) // 2:]) + deflate.flush()
    whole = head + tail + np.array([zlib.crc32(plain), len(plain)], "<u4").tobytes()
    path = tmp_path / "bold.nii.gz"
    path.write_bytes(whole)
    np.testing.assert_allclose(project_volume_frames(open_volume_bold(path), operator), operator.project(frames),
                               rtol=1e-5)
    damages = {"cut short": whole[: len(whole) * 2 // 3],
               "bad checksum": whole[:-8] + bytes(8),
               "invalid deflate block": head + b"\xff" * 16 + whole[len(head) + 16:]}
    for what, damaged in damages.items():
        path.write_bytes(damaged)
        volume = open_volume_bold(path)  # the header is intact
        with pytest.raises(VolumeFileError, match=r"bold.nii.gz: cannot read frames \d+\.\.\d+"):
            project_volume_frames(volume, operator, chunk_frames=2)
    path.write_bytes(b"not gzip" * 100)  # replaced after its header was read
    with pytest.raises(VolumeFileError, match=r"bold.nii.gz: cannot open the run's frames \(BadGzipFile"):
        project_volume_frames(volume, operator)


def test_space_check_names_supported_spaces():
    assert check_volume_space("MNI152NLin6Asym", source="x") is None
    assert check_volume_space("MNI152NLin2009cAsym", source="x") == NLIN2009C_NOTE
    with pytest.raises(VolumeFileError, match=r"x: volume space 'T1w' is not supported.*MNI152NLin6Asym"):
        check_volume_space("T1w", source="x")


def test_3d_file_refused(tmp_path):
    path = _write_nifti(tmp_path / "ref.nii.gz", np.zeros(SHAPE))
    with pytest.raises(VolumeFileError, match=r"ref.nii.gz: expected a 4D BOLD run .* found shape \(91, 109, 91\)"):
        open_volume_bold(path)


def test_mask_of_other_shape_refused(tmp_path):
    bold = open_volume_bold(_write_nifti(tmp_path / "bold.nii.gz", np.zeros((91, 109, 91, 2))))
    mask = _write_nifti(tmp_path / "mask.nii.gz", np.ones((97, 115, 97)))
    with pytest.raises(VolumeFileError, match=r"mask.nii.gz: brain mask of shape \(97, 115, 97\) does not match"):
        read_volume_mask(mask, like=bold)


def test_non_mni_affine_refused():
    native = np.array([[3.0, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]])  # scanner space, corner origin
    with pytest.raises(VolumeFileError, match=r"run.nii.gz: only \d+% of the MNI cortical surface"):
        check_mni_affine(native, (64, 64, 40), source="run.nii.gz")
    oblique = AFFINE.copy()
    oblique[:3, :3] = AFFINE[:3, :3] @ np.array([[1, 0, 0], [0, 0.96, -0.28], [0, 0.28, 0.96]])
    with pytest.raises(VolumeFileError, match="voxel axes are oblique"):
        check_mni_affine(oblique, SHAPE, source="run.nii.gz")
    check_mni_affine(AFFINE, SHAPE, source="run.nii.gz")


def test_prepare_volume_run_cleans_on_the_grid(tmp_path, grid, operator, rng):
    n = 30
    frames = 1000 + rng.normal(0, 5, size=(n, int(np.prod(SHAPE)))).astype(np.float32)
    bold = _write_nifti(tmp_path / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii",
                        frames.T.reshape(SHAPE + (n,), order="F"))
    run = prepare_volume_run(bold, grid, space="MNI152NLin2009cAsym", options=None)
    assert run.note == NLIN2009C_NOTE
    cleaned = run.prepared.cleaned
    assert cleaned.data.shape[1] == grid.n_pixels
    assert cleaned.tr_in == 2.0 and cleaned.tr_out == 1.0
    assert abs(float(np.mean(cleaned.data.astype(np.float64)))) < 1e-2


@pytest.mark.slow  # wb_command takes ~1-2 min here
def test_ribbon_weights_match_workbench(tmp_path, voxel_mm, wb_command):
    import subprocess

    from flatprep.volume import ribbon_matrix, ribbon_surface_files

    directions = np.random.default_rng(5).normal(size=(6, 3)) / 10.0  # waves of ~60 mm
    volume = sum(np.sin(voxel_mm @ d + k) for k, d in enumerate(directions))
    path = _write_nifti(tmp_path / "vol.nii", volume.reshape(SHAPE, order="F"))
    white, pial = ribbon_surface_files("L")
    out = tmp_path / "L.func.gii"
    subprocess.run([wb_command, "-volume-to-surface-mapping", str(path), str(pial), str(out),
                    "-ribbon-constrained", str(white), str(pial)], check=True, capture_output=True)
    workbench = nib.load(str(out)).darrays[0].data
    matrix, _ = ribbon_matrix(AFFINE, SHAPE)
    ours = (matrix @ volume)[: len(workbench)]  # left hemisphere rows
    assert np.corrcoef(ours, workbench)[0, 1] > 0.99  # measured 0.995
    assert np.median(np.abs(ours - workbench)) < 0.05 * volume.std()
