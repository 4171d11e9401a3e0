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
    # A broken stream may also inflate to garbage past the declared size: stopped there, named as corrupt.
    with pytest.raises(SurfaceFileError, match=r"r.func.gii: (not a readable GIFTI file|data array 0 inflates to "
                                               r"more than the 40,968 bytes its header declares; the file is corrupt)"):
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


# --------------------------------------------------------------------------- only data inside the file, bounded


def _bomb(path, n_vertices=10242, inflated=256 * 2**20):
    """A GIFTI time series whose second frame inflates to ``inflated`` bytes while its header declares one frame."""
    import base64
    import zlib

    _time_series(path, np.ones((2, n_vertices)), "GIFTI_ENCODING_B64GZ", timestep="2")
    packer, zeros = zlib.compressobj(9), bytes(2**20)
    packed = b"".join(packer.compress(zeros) for _ in range(inflated // len(zeros))) + packer.flush()
    text = path.read_bytes()
    first = text.index(b"<Data>", text.index(b"<Data>") + 1) + 6
    path.write_bytes(text[:first] + base64.b64encode(packed) + text[text.index(b"</Data>", first):])
    return path


def test_external_file_data_is_refused_before_it_is_read(tmp_path):
    from flatprep.io import load_gifti_pair

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(10242, dtype=np.float32).tobytes())
    left = _time_series(tmp_path / "lh.func.gii", np.ones((2, 10242)), "GIFTI_ENCODING_B64BIN")
    text = left.read_bytes().replace(b'Encoding="Base64Binary"', b'Encoding="ExternalFileBinary" '
                                     b'ExternalFileName="' + str(secret).encode() + b'" ExternalFileOffset="0"')
    left.write_bytes(text)
    right = _time_series(tmp_path / "rh.func.gii", np.ones((2, 10242)), "GIFTI_ENCODING_B64BIN")
    with pytest.raises(SurfaceFileError, match=r"lh.func.gii: a data array is stored in another file \(Encoding "
                                               r"ExternalFileBinary\); flatprep reads only data inside"):
        load_gifti_pair(left, right)


def test_a_decompression_bomb_fails_naming_the_file_within_the_declared_size(tmp_path):
    import subprocess
    import sys

    from flatprep.gifti import read_gifti
    from flatprep.io import load_gifti_pair

    bomb = _bomb(tmp_path / "lh.func.gii")
    right = _time_series(tmp_path / "rh.func.gii", np.ones((2, 10242)), "GIFTI_ENCODING_B64GZ", timestep="2")
    reason = r"lh.func.gii: data array 1 inflates to more than the 40,968 bytes its header declares"
    with pytest.raises(SurfaceFileError, match=reason):
        load_gifti_pair(bomb, right)  # the fast path
    with pytest.raises(SurfaceFileError, match=reason):
        read_gifti(bomb)  # the nibabel path
    # In a fresh process, the peak memory stays far below the 256 MiB that the frame inflates to.
    script = ("import resource, sys\nfrom flatprep.io import load_gifti_pair\nfrom flatprep.exceptions import "
              "SurfaceFileError\nbase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\ntry:\n"
              f"    load_gifti_pair({str(bomb)!r}, {str(right)!r})\nexcept SurfaceFileError:\n    pass\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    grown_mib = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert grown_mib < 64, grown_mib
