"""Writers of tiny BIDS / fMRIPrep-style inputs for tests (no network, real file formats)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def write_func_gifti(path, data, tr=None):
    """(n_timepoints, n_vertices) -> one GIFTI data array per frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = nib.gifti.GiftiMetaData({"TimeStep": str(tr)} if tr is not None else {})
    image = nib.gifti.GiftiImage(meta=meta, darrays=[
        nib.gifti.GiftiDataArray(np.asarray(frame, np.float32), intent="NIFTI_INTENT_TIME_SERIES") for frame in data
    ])
    nib.save(image, str(path))
    return path


def write_dtseries(path, n_timepoints, tr, *, cortex=True, rng=None):
    """A CIFTI dtseries on fs_LR 32k cortex (or, with cortex=False, a volume structure only)."""
    from flatprep.atlases import grayordinate_vertices

    left, right = grayordinate_vertices()
    if cortex:
        models = (nib.cifti2.BrainModelAxis.from_surface(left, 32492, "CortexLeft")
                  + nib.cifti2.BrainModelAxis.from_surface(right, 32492, "CortexRight"))
    else:
        models = nib.cifti2.BrainModelAxis.from_mask(np.ones((2, 2, 2), bool), affine=np.eye(4), name="thalamus_left")
    series = nib.cifti2.SeriesAxis(0, tr, n_timepoints, unit="SECOND")
    data = (rng or np.random.default_rng(0)).normal(1000, 10, size=(n_timepoints, len(models))).astype(np.float32)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Cifti2Image(data, header=(series, models)), str(path))
    return Path(path), data


def write_json(path, value):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value))
    return Path(path)


def write_confounds(path, n_timepoints, *, columns=MOTION, n_dummy=0, rng=None):
    rng = rng or np.random.default_rng(0)
    table = {c: rng.normal(0, 0.1, n_timepoints) for c in columns}
    for i in range(n_dummy):
        table[f"non_steady_state_outlier{i:02d}"] = (np.arange(n_timepoints) == i).astype(float)
    lines = ["\t".join(table)] + ["\t".join(f"{table[c][t]:.6f}" for c in table) for t in range(n_timepoints)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def make_dataset(root, *, with_derivative_description=True):
    """An empty raw BIDS dataset with an fMRIPrep derivative folder; returns (root, fmriprep)."""
    root = Path(root)
    write_json(root / "dataset_description.json", {"Name": "test", "BIDSVersion": "1.10.0"})
    fmriprep = root / "derivatives" / "fmriprep"
    fmriprep.mkdir(parents=True, exist_ok=True)
    if with_derivative_description:
        write_json(fmriprep / "dataset_description.json", {
            "Name": "fMRIPrep", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "fMRIPrep"}]})
    return root, fmriprep


def smooth_bold(n_timepoints, space="fsaverage5", *, rng, baseline=1000.0):
    """Smooth random BOLD on both hemispheres: (n_timepoints, 2 * n_vertices) float32."""
    from flatprep.spaces import HEMIS, fsaverage_positions

    x = np.concatenate([fsaverage_positions(space, h) for h in HEMIS])
    patterns = np.stack([np.sin(3 * x[:, 0]), np.cos(2 * x[:, 1]) * x[:, 2], x[:, 0] * x[:, 1], x[:, 2]])
    series = rng.normal(size=(n_timepoints, len(patterns)))
    noise = rng.normal(0, 0.2, size=(n_timepoints, len(x)))
    return (baseline + 10 * (series @ patterns + noise)).astype(np.float32)


def add_gifti_run(fmriprep, subject, *, data, tr=2.0, task="rest", sidecar=True, confounds=True, hemis=("L", "R")):
    """A fsaverage5 GIFTI run (data is (T, 2 * 10242)); returns its files."""
    func = Path(fmriprep) / f"sub-{subject}" / "func"
    stem = f"sub-{subject}_task-{task}"
    n = data.shape[1] // 2
    files = {}
    for index, hemi in enumerate(("L", "R")):
        if hemi in hemis:
            files[hemi] = write_func_gifti(func / f"{stem}_hemi-{hemi}_space-fsaverage5_bold.func.gii",
                                           data[:, index * n:(index + 1) * n])
            if sidecar:
                write_json(func / f"{stem}_hemi-{hemi}_space-fsaverage5_bold.json",
                           {"RepetitionTime": tr, "TaskName": task} if tr is not None else {"TaskName": task})
    if confounds:
        files["confounds"] = write_confounds(func / f"{stem}_desc-confounds_timeseries.tsv", data.shape[0])
    return files


# --------------------------------------------------------------------------- per-run files and faults


def write_flat_run(path, *, n_frames=40, subject="01", rng=None, shape=(16, 32)):
    """A small valid per-run flat-map file (no participant level needed); returns its frames."""
    from flatprep.h5 import write_run

    rng = rng or np.random.default_rng(0)
    mask = np.zeros(shape, bool)
    mask[2:-2, 3:-3] = True
    n_pixels = int(mask.sum())
    frames = rng.standard_normal((n_frames, n_pixels)).astype(np.float16)
    entities = {"subject": subject, "task": "rest", "space": "fsLR"}
    grid_attrs = {"template": "t", "template_space": "fsaverage", "template_fingerprint": "f", "pixel_size_mm": 2.4,
                  "bbox_mm": [0, 0, 1, 1], "shape": list(shape), "n_valid_pixels": n_pixels, "space": "fsLR",
                  "method": "linear", "operator_key": "k"}
    write_run(path, frames=frames, mean=rng.uniform(500, 1000, n_pixels), std=np.ones(n_pixels), mask=mask,
              attrs={"tr_in": 2.0, "tr_out": 1.0, "n_timepoints_in": n_frames, "n_dropped": 0, "n_zero_variance": 0,
                     "entities": entities, "sources": [], "clean_options": {}, "inputs_key": "x"},
              grid_attrs=grid_attrs)
    return frames


def flip_bytes_in_frames(path, n=64):
    """Invert ``n`` bytes inside the first chunk of /frames (the HDF5 structure stays readable)."""
    import h5py

    with h5py.File(path, "r") as handle:
        offset = handle["frames"].id.get_chunk_info(0).byte_offset + 32
    data = bytearray(Path(path).read_bytes())
    data[offset:offset + n] = bytes(255 - b for b in data[offset:offset + n])
    Path(path).write_bytes(bytes(data))


class DiskFull:
    """Stand-in for ``open`` in a module: files opened for writing raise ENOSPC after ``budget`` bytes."""

    def __init__(self, budget=0, match=""):
        self.budget, self.match, self.calls = budget, match, []

    def __call__(self, file, mode="r", *args, **kwargs):
        import builtins

        handle = builtins.open(file, mode, *args, **kwargs)
        if not any(m in mode for m in "wa+") or self.match not in str(file):
            return handle
        self.calls.append(str(file))
        return _FullFile(handle, self)


class _FullFile:
    def __init__(self, handle, disk):
        self._handle, self._disk = handle, disk

    def write(self, data):
        import errno
        import os

        if self._disk.budget < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.budget -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def file_digests(root, patterns=("*.h5", "*.json"), *, subject: str = "") -> dict:
    """SHA-256 of every output file under ``root`` matching ``patterns`` (work folders left out).

    ``subject`` keeps only files whose name starts with it (e.g. ``"sub-01"``).
    """
    import hashlib

    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for pattern in patterns for p in root.rglob(pattern)
            if ".work" not in p.parts and p.name.startswith(subject)}


def read_manifest_rows(out) -> list[dict]:
    """The rows of ``out/shards/manifest.tsv``, as dicts (to edit them in tampering tests)."""
    import csv

    with (Path(out) / "shards" / "manifest.tsv").open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def write_manifest_rows(out, rows: list[dict]) -> None:
    """Write ``rows`` back as ``out/shards/manifest.tsv`` (same columns, tab-separated)."""
    import csv

    with (Path(out) / "shards" / "manifest.tsv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
