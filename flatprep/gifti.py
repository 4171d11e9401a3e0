"""Low-level GIFTI reading: data arrays, file metadata and surface meshes.

Shared by :mod:`flatprep.spaces` (template spheres and ROIs) and
:mod:`flatprep.io` (BOLD time series); every error names the file.
:func:`load_image` is the one ``nibabel.load`` with errors that name the
file, used here and for the CIFTI and NIfTI readers of :mod:`flatprep.io`.
"""

from __future__ import annotations

import binascii
import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .exceptions import FlatprepError, SurfaceFileError
from .geometry import Mesh


def load_image(path: str | Path, what: str, error: type[FlatprepError], **options):
    """``nibabel.load(path, **options)``; a missing file, or one nibabel cannot read, raises ``error``.

    ``what`` names the expected kind in the message (``"GIFTI file"``,
    ``"NIfTI BOLD run"``).
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file")
    try:
        return nib.load(str(path), **options)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise error(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from err


def read_gifti(path: str | Path) -> tuple[list[np.ndarray], dict[str, str]]:
    """The data arrays and the file-level metadata of a GIFTI file, parsed once.

    Errors name the file. Only data inside the file is read
    (:func:`check_gifti_data`): an array in an external file, or one that
    inflates beyond the size its header declares, is refused before nibabel reads it.
    """
    path = Path(path)
    if path.is_file():
        check_gifti_data(path)
    image = load_image(path, "GIFTI file", SurfaceFileError)
    arrays = [np.asarray(d.data) for d in image.darrays]
    meta = dict(image.meta)
    if not arrays:
        raise SurfaceFileError(f"{path}: GIFTI file holds no data arrays")
    return arrays, meta


def read_gifti_arrays(path: str | Path) -> list[np.ndarray]:
    """The data arrays of a GIFTI file, with errors that name the file."""
    return read_gifti(path)[0]


def read_gifti_mesh(path: str | Path) -> Mesh:
    """A GIFTI surface as a Mesh (vertices float64, faces int64)."""
    arrays = read_gifti_arrays(path)
    points = [a for a in arrays if a.ndim == 2 and a.shape[1] == 3 and a.dtype.kind == "f"]
    triangles = [a for a in arrays if a.ndim == 2 and a.shape[1] == 3 and a.dtype.kind in "iu"]
    if not points or not triangles:
        raise SurfaceFileError(
            f"{path}: expected a surface (a float (n, 3) pointset and an int (n, 3) triangle array), "
            f"found arrays of shapes {[a.shape for a in arrays]}"
        )
    vertices, faces = points[0].astype(np.float64), triangles[0].astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise SurfaceFileError(
            f"{path}: triangles index vertices 0..{faces.max()} but the surface has {len(vertices)}"
        )
    return Mesh(vertices, faces)


# --------------------------------------------------------------------------- what a file may hold

#: nibabel's names for the encodings that keep data outside the GIFTI file, and for gzip-compressed data.
_EXTERNAL = (b"ExternalFileBinary", b"External", b"GIFTI_ENCODING_EXTBIN")
_GZIP = (b"GZipBase64Binary", b"B64GZ", b"GIFTI_ENCODING_B64GZ")
_ENCODING_ATTRIBUTE = re.compile(rb"""\bEncoding\s*=\s*["']([^"']*)["']""")


def declared_bytes(attrs: dict, path: Path, index: int) -> int:
    """Bytes of a data array as its ``DataType``, ``Dimensionality`` and ``Dim*`` attributes declare them."""
    from nibabel.nifti1 import data_type_codes

    try:
        itemsize = data_type_codes.dtype[attrs[b"DataType"].decode("ascii")].itemsize
        dims = [int(attrs[b"Dim%d" % axis]) for axis in range(int(attrs[b"Dimensionality"]))]
    except (KeyError, ValueError, UnicodeDecodeError):
        raise SurfaceFileError(f"{path}: data array {index} has no valid DataType, Dimensionality and Dim "
                               "attributes") from None
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def inflate_bounded(data: bytes, limit: int, *, path: Path, index: int) -> bytes:
    """zlib-inflate ``data`` without ever holding more than ``limit`` + 1 bytes.

    Raises
    ------
    SurfaceFileError
        Naming the file: the data inflates beyond ``limit`` (the declared size).
    """
    from isal import isal_zlib

    inflater = isal_zlib.decompressobj()
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit:
        raise SurfaceFileError(f"{path}: data array {index} inflates to more than the {limit:,} bytes its "
                               "header declares; the file is corrupt (or built to exhaust memory)")
    return out


def check_gifti_data(path: str | Path) -> None:
    """Refuse a GIFTI file whose data lies outside it or inflates beyond its declared size.

    An ``ExternalFileBinary`` array would make nibabel read any file it names
    (outside the dataset too, and unrecorded among the run's sources). Each
    ``GZipBase64Binary`` array is inflated with the size its header declares as
    the bound, so a decompression bomb costs that much memory, not gigabytes.

    Raises
    ------
    SurfaceFileError
        Naming the file and the array.
    """
    import pybase64

    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as err:
        raise SurfaceFileError(f"{path}: cannot read the GIFTI file ({err.strerror or err})") from err
    for found in _ENCODING_ATTRIBUTE.finditer(text):
        if found.group(1) in _EXTERNAL:
            raise SurfaceFileError(f"{path}: a data array is stored in another file (Encoding "
                                   f"{found.group(1).decode()}); flatprep reads only data inside the GIFTI file")
    for index, (attrs, data) in enumerate(_data_arrays(text, 0)):
        if attrs.get(b"ExternalFileName", b"").strip():
            raise SurfaceFileError(f"{path}: data array {index} names an external file "
                                   f"({attrs[b'ExternalFileName'].decode(errors='replace')!r}); "
                                   "flatprep reads only data inside the GIFTI file")
        if attrs.get(b"Encoding") in _GZIP and data is not None:
            try:
                raw = pybase64.b64decode(data)
            except binascii.Error:
                continue  # nibabel's own error names the file
            inflate_bounded(raw, declared_bytes(attrs, path, index), path=path, index=index)


# --------------------------------------------------------------------------- time series, fast path

_ATTRIBUTE = re.compile(rb"""([A-Za-z0-9_]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_MD = re.compile(rb"<MD>\s*<Name>(.*?)</Name>\s*<Value>(.*?)</Value>\s*</MD>", re.S)
_ENDIAN = {b"LittleEndian": "<f4", b"BigEndian": ">f4"}
_ENCODINGS = (b"GZipBase64Binary", b"Base64Binary")


@dataclass(frozen=True)
class GiftiFrames:
    """A GIFTI time series found by :func:`scan_gifti_frames`, not yet decoded.

    ``n_frames`` 1-D float32 data arrays of ``n_vertices`` values each, inline
    base64 (optionally gzip) data; ``meta`` is the file-level metadata.
    """

    path: Path
    n_frames: int
    n_vertices: int
    meta: dict[str, str]
    blocks: list  # per frame: (dtype string, gzipped, base64 bytes)

    def decode_into(self, out: np.ndarray) -> bool:
        """Decode every frame into ``out`` ((n_frames, n_vertices) float32, C-order rows); False if one is bad.

        A frame that inflates beyond its declared size raises :class:`SurfaceFileError`.

        Decoding is most of the cost of reading a GIFTI run, so it uses SIMD base64
        (``pybase64``) and Intel ISA-L inflate (``isal``): the same bytes and the same
        errors as ``binascii.a2b_base64`` (non-base64 characters such as line breaks
        are skipped) and ``zlib.decompress``, about 2.5x faster together.
        """
        import pybase64
        from isal import isal_zlib

        expected = 4 * self.n_vertices
        for index, (row, (dtype, gzipped, text)) in enumerate(zip(out, self.blocks)):
            try:
                raw = pybase64.b64decode(text)
                if gzipped:  # never more than the declared size in memory (a bomb raises, naming the file)
                    raw = inflate_bounded(raw, expected, path=self.path, index=index)
            except (binascii.Error, isal_zlib.error):
                return False
            if len(raw) != expected:
                return False
            row[:] = np.frombuffer(raw, dtype=dtype)
        return True


def _data_arrays(text: bytes, start: int):
    """(attributes, inline data or None) of each ``<DataArray>`` element from offset ``start``.

    Plain substring searches (``bytes.find``), as a regex over megabytes of
    base64 costs more than decoding it. Stops at the first element that is cut short.
    """
    view = memoryview(text)  # data slices without copies
    while (start := text.find(b"<DataArray", start)) >= 0:
        head_end = text.find(b">", start)
        open_data = text.find(b"<Data>", head_end)
        close_data = text.find(b"</Data>", open_data)
        end = text.find(b"</DataArray>", close_data)
        if min(head_end, open_data, close_data, end) < 0:
            return
        attrs = {k: a or b for k, a, b in _ATTRIBUTE.findall(text, start, head_end)}
        if text.find(b"</DataArray>", head_end, open_data) >= 0:  # this element has no <Data>
            yield attrs, None
            return
        yield attrs, view[open_data + 6 : close_data]
        start = end


def _text_value(value: bytes) -> str:
    """Element text: the CDATA content, or the text with XML entities resolved."""
    value = value.strip()
    if value.startswith(b"<![CDATA[") and value.endswith(b"]]>"):
        return value[9:-3].decode("utf-8")
    return html.unescape(value.decode("utf-8"))


def scan_gifti_frames(path: str | Path) -> GiftiFrames | None:
    """Index the frames of a plain GIFTI time series without decoding them (substring searches).

    The common fMRIPrep/FreeSurfer layout only: one 1-D float32 data array per
    frame, inline (GZip)Base64Binary data, as many arrays as the file
    declares. Anything else (other types or encodings, external data, a
    gzipped or truncated file, odd markup) returns None: the caller then reads
    the file with :func:`read_gifti`, whose errors name the file.
    """
    try:
        text = Path(path).read_bytes()
    except OSError:
        return None
    head = re.search(rb"<GIFTI\b([^>]*)>", text[:4096])
    first = text.find(b"<DataArray")
    if head is None or first < 0 or not text[-256:].rstrip().endswith(b"</GIFTI>"):
        return None
    declared = dict((k, a or b) for k, a, b in _ATTRIBUTE.findall(head.group(1))).get(b"NumberOfDataArrays")
    blocks, n_vertices = [], None
    for attrs, data in _data_arrays(text, first):
        if (attrs.get(b"DataType") != b"NIFTI_TYPE_FLOAT32" or attrs.get(b"Dimensionality") != b"1"
                or attrs.get(b"Encoding") not in _ENCODINGS or attrs.get(b"Endian") not in _ENDIAN
                or attrs.get(b"ExternalFileName", b"") != b"" or data is None
                or not attrs.get(b"Dim0", b"").isdigit()):
            return None
        size = int(attrs[b"Dim0"])
        if n_vertices is not None and size != n_vertices:
            return None
        n_vertices = size
        blocks.append((_ENDIAN[attrs[b"Endian"]], attrs[b"Encoding"] == _ENCODINGS[0], data))
    if not blocks or declared is None or not declared.isdigit() or int(declared) != len(blocks):
        return None
    meta = {_text_value(name): _text_value(value) for name, value in _MD.findall(text, 0, first)}
    return GiftiFrames(Path(path), len(blocks), n_vertices, meta, blocks)
