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
