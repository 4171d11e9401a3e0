
import nibabel as nib
import numpy as np
import pytest

from flatprep.exceptions import FlatmapError, SurfaceSpaceError
from flatprep.flatmap import make_grid
from flatprep.gifti import read_gifti_mesh
from flatprep.spaces import nilearn_fsaverage5_file
from flatprep.templates import DEFAULT_GAP_MM, load_template, template_from_gifti, template_from_pycortex


def _write_surface(path, vertices, faces):
    image = nib.gifti.GiftiImage(darrays=[
        nib.gifti.GiftiDataArray(np.asarray(vertices, np.float32), intent="NIFTI_INTENT_POINTSET"),
        nib.gifti.GiftiDataArray(np.asarray(faces, np.int32), intent="NIFTI_INTENT_TRIANGLE"),
    ])
    nib.save(image, str(path))
    return path


def test_bundled_template_drops_cut_vertices_and_leaves_a_gap():
    template = load_template()
    assert template.space.name == "fsaverage5"
    left, right = template.flats["L"], template.flats["R"]
    raw = read_gifti_mesh(nilearn_fsaverage5_file("flat", "L"))
    cut = raw.vertices[:, 2] != 0
    assert cut.sum() > 0
    assert np.isnan(left.vertices[cut]).all() and np.isfinite(left.vertices[~cut]).all()
    assert np.nanmax(left.vertices[:, 0]) == pytest.approx(-DEFAULT_GAP_MM / 2)
    assert np.nanmin(right.vertices[:, 0]) == pytest.approx(DEFAULT_GAP_MM / 2)


def test_gifti_pair_template_equals_the_bundled_one(tmp_path):
    paths = []
    for hemi in "LR":
        mesh = read_gifti_mesh(nilearn_fsaverage5_file("flat", hemi))
        paths.append(_write_surface(tmp_path / f"flat_{hemi}.surf.gii", mesh.vertices, mesh.faces))
    template = template_from_gifti(*paths, name="mine")
    bundled = load_template()
    assert template.fingerprint == bundled.fingerprint
    assert np.array_equal(make_grid(template, pixel_size=4.8).mask, make_grid(pixel_size=4.8).mask)


def test_gifti_pair_with_different_vertex_counts_is_refused(tmp_path):
    mesh = read_gifti_mesh(nilearn_fsaverage5_file("flat", "L"))
    left = _write_surface(tmp_path / "l.surf.gii", mesh.vertices, mesh.faces)
    right = _write_surface(tmp_path / "r.surf.gii", mesh.vertices[:-2], mesh.faces[mesh.faces.max(1) < len(mesh.vertices) - 2])
    with pytest.raises(FlatmapError, match="left flat surface has 10,242 vertices but the right has 10,240"):
        template_from_gifti(left, right)


def test_gifti_pair_of_unknown_density_is_refused(tmp_path):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    left = _write_surface(tmp_path / "l.surf.gii", vertices, faces)
    with pytest.raises(SurfaceSpaceError, match="4 vertices per hemisphere match no known surface space"):
        template_from_gifti(left, left)


def _pycortex_filestore(root, subject="fsavg5"):
    """A pycortex filestore whose subject carries the bundled fsaverage5 surfaces."""
    surfaces = root / subject / "surfaces"
    surfaces.mkdir(parents=True)
    for folder in ("transforms", "anatomicals", "surface-info"):  # pycortex lists these
        (root / subject / folder).mkdir()
    for hemi, side in (("lh", "L"), ("rh", "R")):
        flat = read_gifti_mesh(nilearn_fsaverage5_file("flat", side))
        _write_surface(surfaces / f"flat_{hemi}.gii", flat.vertices, flat.faces)
        for kind, source in (("inflated", "infl"), ("pia", "pial"), ("wm", "white")):
            mesh = read_gifti_mesh(nilearn_fsaverage5_file(source, side))
            _write_surface(surfaces / f"{kind}_{hemi}.gii", mesh.vertices, mesh.faces)
    return root


def test_pycortex_subject_template_reads_a_temporary_filestore(tmp_path):
    filestore = _pycortex_filestore(tmp_path / "db")
    template = template_from_pycortex("fsavg5", filestore)
    assert template.name == "pycortex:fsavg5"
    assert template.space.name == "fsaverage5"
    assert np.array_equal(make_grid(template, pixel_size=4.8).mask, make_grid(pixel_size=4.8).mask)


def test_pycortex_missing_subject_names_the_filestore(tmp_path):
    with pytest.raises(FlatmapError, match="no pycortex subject 'fsaverage' in filestore"):
        template_from_pycortex("fsaverage", tmp_path)


def test_unknown_bundled_template_is_refused():
    with pytest.raises(FlatmapError, match="unknown bundled flat template 'fsLR'"):
        load_template("fsLR")
