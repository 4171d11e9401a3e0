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


def _time_series(path, frames, encoding, endian="little", timestep="2000 &amp; ms"):
    import nibabel as nib

    frames = np.asarray(frames, dtype=np.float32)
    image = nib.gifti.GiftiImage(meta=nib.gifti.GiftiMetaData({"TimeStep": timestep}), darrays=[
        nib.gifti.GiftiDataArray(frame.astype(frame.dtype.newbyteorder(">" if endian == "big" else "<")),
                                 intent="NIFTI_INTENT_TIME_SERIES", encoding=encoding)
        for frame in frames])
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("encoding", ["GIFTI_ENCODING_B64GZ", "GIFTI_ENCODING_B64BIN"])
@pytest.mark.parametrize("endian", ["little", "big"])
def test_scan_gifti_frames_decodes_what_nibabel_reads(tmp_path, rng, encoding, endian):
    from flatprep.gifti import read_gifti, scan_gifti_frames

    frames = rng.normal(size=(4, 10242))
    path = _time_series(tmp_path / "l.func.gii", frames, encoding, endian)
    scan = scan_gifti_frames(path)
    out = np.empty((scan.n_frames, scan.n_vertices), np.float32)
    assert scan.decode_into(out)
    arrays, meta = read_gifti(path)
    np.testing.assert_array_equal(out, np.stack(arrays))
    assert scan.meta == meta


def test_scan_gifti_frames_leaves_other_layouts_to_nibabel(tmp_path, rng):
    import nibabel as nib

    from flatprep.gifti import scan_gifti_frames

    ascii_path = _time_series(tmp_path / "ascii.func.gii", rng.normal(size=(2, 10)), "GIFTI_ENCODING_ASCII")
    assert scan_gifti_frames(ascii_path) is None
    two_d = tmp_path / "two_d.func.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.zeros((10, 3), np.float32))]), str(two_d))
    assert scan_gifti_frames(two_d) is None
    whole = _time_series(tmp_path / "cut.func.gii", rng.normal(size=(3, 10242)), "GIFTI_ENCODING_B64GZ")
    whole.write_bytes(whole.read_bytes()[:-2000])
    assert scan_gifti_frames(whole) is None  # truncated: nibabel names the file


def test_gifti_pair_with_a_corrupt_frame_names_the_file(tmp_path, rng):
    from flatprep.io import load_gifti_pair

    left = _time_series(tmp_path / "l.func.gii", rng.normal(size=(3, 10242)), "GIFTI_ENCODING_B64GZ", timestep="2")
    right = _time_series(tmp_path / "r.func.gii", rng.normal(size=(3, 10242)), "GIFTI_ENCODING_B64GZ", timestep="2")
    text = right.read_bytes()
    start = text.index(b"<Data>") + 6
    right.write_bytes(text[:start + 100] + b"AAAA" + text[start + 104:])  # the gzip stream no longer checks out
    with pytest.raises(SurfaceFileError, match="r.func.gii: not a readable GIFTI file"):
        load_gifti_pair(left, right)


def test_scan_gifti_frames_skips_line_breaks_and_refuses_bad_base64(tmp_path, rng):
    """Writers that wrap base64 lines are read like nibabel reads them; a frame with a cut
    base64 group (bad padding) makes the decode fail, so the caller falls back to nibabel."""
    import re

    from flatprep.gifti import read_gifti, scan_gifti_frames

    path = _time_series(tmp_path / "l.func.gii", rng.normal(size=(3, 10242)), "GIFTI_ENCODING_B64GZ")
    text = path.read_bytes()

    def wrap(match):
        data = match.group(1)
        return b"<Data>" + b"\n".join(data[i:i + 76] for i in range(0, len(data), 76)) + b"\n</Data>"

    wrapped = tmp_path / "wrapped.func.gii"
    wrapped.write_bytes(re.sub(rb"<Data>(.*?)</Data>", wrap, text, flags=re.S))
    scan = scan_gifti_frames(wrapped)
    out = np.empty((scan.n_frames, scan.n_vertices), np.float32)
    assert scan.decode_into(out)
    np.testing.assert_array_equal(out, np.stack(read_gifti(path)[0]))

    cut = tmp_path / "cut.func.gii"
    end = text.index(b"</Data>")
    cut.write_bytes(text[:end - 1] + text[end:])  # one base64 character fewer: bad padding
    scan = scan_gifti_frames(cut)
    assert scan is not None and not scan.decode_into(np.empty((scan.n_frames, scan.n_vertices), np.float32))
