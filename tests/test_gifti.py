"""Tests of flatprep.gifti: low-level GIFTI reading."""

import numpy as np
import pytest

from flatprep.exceptions import SurfaceFileError
from flatprep.gifti import read_gifti_mesh
from flatprep.spaces import nilearn_fsaverage5_file


def test_read_gifti_mesh_reads_the_fsaverage5_sphere():
    mesh = read_gifti_mesh(nilearn_fsaverage5_file("sphere", "L"))
    assert mesh.vertices.shape == (10242, 3) and mesh.vertices.dtype == np.float64
    assert mesh.faces.shape == (20480, 3) and mesh.faces.dtype == np.int64


def test_read_gifti_mesh_names_a_truncated_file(tmp_path):
    source = nilearn_fsaverage5_file("flat", "L").read_bytes()
    broken = tmp_path / "flat_left.gii.gz"
    broken.write_bytes(source[: len(source) // 2])
    with pytest.raises(SurfaceFileError, match="flat_left.gii.gz: not a readable GIFTI file"):
        read_gifti_mesh(broken)
    with pytest.raises(SurfaceFileError, match="no such file"):
        read_gifti_mesh(tmp_path / "missing.gii")
