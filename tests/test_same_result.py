"""The same result on any machine (README, "Same result on every machine").

On one machine a run's bytes do not depend on the thread settings of the
environment (in-process runs, Dask workers and SLURM jobs differ only there:
the cluster tests compare their bytes); another BLAS kernel, as another CPU
would run, stays within the stated tolerance, and a rerun there trusts the
files it finds.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from builders import file_digests

FAST = ["--pixel-size", "2.4", "--participant-label", "01", "--no-figures"]

#: The README's bound: stored frames (float16 z units) from two BLAS kernels differ by at most this much.
KERNEL_TOLERANCE_Z = 0.02

THREAD_SETTINGS = {
    "one thread": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "three threads": {"OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"},
}


def _participant(bids, out, env: dict, *extra) -> None:
    command = [sys.executable, "-m", "flatprep.pipelines.cli.run", str(bids), str(out), "participant", *FAST, *extra]
    process = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    assert process.returncode == 0, process.stderr[-2000:]


def test_clean_bold_gives_the_same_bytes_with_any_blas_thread_count(sample_bids):
    from threadpoolctl import threadpool_limits

    from flatprep.prepare import FLAT_PRODUCT_DTYPE, prepare_run

    (cifti,) = sample_bids.glob("derivatives/fmriprep/sub-01/func/sub-01_task-rest_space-fsLR_*.dtseries.nii")
    (confounds,) = cifti.parent.glob("sub-01_task-rest_desc-confounds_timeseries.tsv")
    cleaned = {}
    for n_threads in (1, 2, 4):
        with threadpool_limits(limits=n_threads):  # the caller's setting: clean_bold must not follow it
            run = prepare_run([cifti], confounds_file=confounds, product_dtype=FLAT_PRODUCT_DTYPE)
        cleaned[n_threads] = run.cleaned.data
    assert cleaned[1].tobytes() == cleaned[2].tobytes() == cleaned[4].tobytes()


@pytest.mark.slow
def test_participant_bytes_do_not_depend_on_the_thread_settings(sample_bids, participant_out, tmp_path):
    # participant_out ran in the test process with its thread settings; these run with others.
    expected = file_digests(participant_out, subject="sub-01")
    assert any("fsLR" in name for name in expected)  # the space whose cleaning once followed the thread count
    for name, env in THREAD_SETTINGS.items():
        out = tmp_path / name.replace(" ", "-")
        _participant(sample_bids, out, env)
        assert file_digests(out, subject="sub-01") == expected, name


def _kernels() -> list[str]:
    """Two OpenBLAS kernels this CPU runs (each process reports the one it got)."""
    probe = "from threadpoolctl import threadpool_info; import numpy; " \
            "print(' '.join(i['architecture'] for i in threadpool_info() if i['internal_api'] == 'openblas'))"
    found = []
    for kernel in ("Haswell", "Sandybridge", "Nehalem"):
        got = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "OPENBLAS_CORETYPE": kernel},
                             capture_output=True, text=True).stdout.split()
        if got and all(name == kernel for name in got):
            found.append(kernel)
    return found[:2]


def _frames(root) -> dict:
    from flatprep.h5 import open_h5

    frames = {}
    for path in sorted(root.rglob("*_desc-flat_bold.h5")):
        with open_h5(path) as handle:
            frames[path.name] = handle["frames"][()].astype(np.float64)  # (T, P) z units
    return frames


@pytest.mark.slow
def test_another_blas_kernel_stays_within_the_stated_tolerance_and_reruns_trust_the_files(sample_bids, tmp_path):
    kernels = _kernels()
    if len(kernels) < 2:
        pytest.skip(f"this CPU runs fewer than two of the OpenBLAS kernels tried (found: {kernels})")
    outs = {kernel: tmp_path / kernel for kernel in kernels}
    for kernel, out in outs.items():
        _participant(sample_bids, out, {"OPENBLAS_CORETYPE": kernel})
    first, second = (_frames(outs[k]) for k in kernels)
    assert first.keys() == second.keys() and len(first) == 2
    for name in first:
        assert first[name].shape == second[name].shape
        assert np.abs(first[name] - second[name]).max() <= KERNEL_TOLERANCE_Z, name

    # A rerun under the other kernel verifies the files it finds and rewrites none of them.
    out = outs[kernels[0]]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*_desc-flat_bold.*")}
    digests = file_digests(out)
    _participant(sample_bids, out, {"OPENBLAS_CORETYPE": kernels[1]})
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_desc-flat_bold.*")} == before
    assert file_digests(out) == digests
    from flatprep.h5 import validate_run

    assert [problem for path in out.rglob("*_desc-flat_bold.h5") for problem in validate_run(path)] == []


def test_embeddings_do_not_depend_on_torch_threads(coarse_grid):
    import torch

    from flatprep.learn.embed import Encoder
    from flatprep.learn.model import build_model

    torch.manual_seed(0)
    model = build_model("micro", img_size=tuple(coarse_grid.shape), clip_frames=16)
    encoder = Encoder(model, coarse_grid.pixels, clip_frames=16, normalize="frame", clip_value=3.0,
                      clean_options=None)
    frames = np.random.default_rng(0).standard_normal((48, coarse_grid.n_pixels)).astype(np.float16)
    threads = torch.get_num_threads()
    try:
        embedded = {}
        for n_threads in (1, 2, 4):
            torch.set_num_threads(n_threads)
            embedded[n_threads] = encoder.embed_frames(frames, batch_size=3)
    finally:
        torch.set_num_threads(threads)
    for n_threads in (2, 4):
        assert np.array_equal(embedded[n_threads].cls, embedded[1].cls)
        assert np.array_equal(embedded[n_threads].patch_mean, embedded[1].patch_mean)
