"""A corpus of broken inputs: each fails alone with one clear line, the rest finish."""

import csv
from pathlib import Path

import numpy as np
import pytest

from flatprep.pipelines.cli.run import main

from builders import (
    add_gifti_run,
    make_dataset,
    smooth_bold,
    write_confounds,
    write_dtseries,
    write_func_gifti,
    write_json,
)

N = 10242
T = 40


def _func(fmriprep, subject):
    return Path(fmriprep) / f"sub-{subject}" / "func"


def _stem(subject, hemi):
    return f"sub-{subject}_task-rest_hemi-{hemi}_space-fsaverage5_bold"


def _truncated(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b01", data=smooth_bold(T, rng=rng))
    files["L"].write_bytes(files["L"].read_bytes()[:4000])


def _vertex_counts_differ(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b02", data=smooth_bold(T, rng=rng))
    write_func_gifti(files["R"], rng.normal(1000, 5, size=(T, 40962)))


def _unknown_density(fmriprep, rng):
    add_gifti_run(fmriprep, "b03", data=rng.normal(1000, 5, size=(T, 10000)).astype(np.float32))


def _nan_frames(fmriprep, rng):
    data = smooth_bold(T, rng=rng)
    data[5:7, :100] = np.nan
    add_gifti_run(fmriprep, "b04", data=data)


def _inf_frames(fmriprep, rng):
    data = smooth_bold(T, rng=rng)
    data[9, 20000] = np.inf
    add_gifti_run(fmriprep, "b05", data=data)


def _constant_run(fmriprep, rng):
    add_gifti_run(fmriprep, "b06", data=np.full((T, 2 * N), 1000.0, np.float32))


def _tr_missing(fmriprep, rng):
    add_gifti_run(fmriprep, "b07", data=smooth_bold(T, rng=rng), tr=None)


def _tr_zero(fmriprep, rng):
    add_gifti_run(fmriprep, "b08", data=smooth_bold(T, rng=rng), tr=0)


def _tr_negative(fmriprep, rng):
    add_gifti_run(fmriprep, "b09", data=smooth_bold(T, rng=rng), tr=-2.0)


def _too_short(fmriprep, rng):
    add_gifti_run(fmriprep, "b10", data=smooth_bold(8, rng=rng))


def _confounds_wrong_length(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b11", data=smooth_bold(T, rng=rng))
    write_confounds(files["confounds"], T - 3)


def _confounds_missing_columns(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b12", data=smooth_bold(T, rng=rng))
    write_confounds(files["confounds"], T, columns=("trans_x", "framewise_displacement"))


def _cifti_without_cortex(fmriprep, rng):
    func = _func(fmriprep, "b13")
    write_dtseries(func / "sub-b13_task-rest_space-fsLR_den-91k_bold.dtseries.nii", T, 2.0, cortex=False)
    write_json(func / "sub-b13_task-rest_space-fsLR_den-91k_bold.json", {"RepetitionTime": 2.0})


def _empty_file(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b14", data=smooth_bold(T, rng=rng))
    files["R"].write_bytes(b"")


def _missing_hemisphere(fmriprep, rng):
    add_gifti_run(fmriprep, "b15", data=smooth_bold(T, rng=rng), hemis=("L",))


def _sidecar_not_json(fmriprep, rng):
    add_gifti_run(fmriprep, "b16", data=smooth_bold(T, rng=rng))
    (_func(fmriprep, "b16") / f"{_stem('b16', 'L')}.json").write_text("{RepetitionTime: 2")


def _ragged_frames(fmriprep, rng):
    import nibabel as nib

    files = add_gifti_run(fmriprep, "b17", data=smooth_bold(T, rng=rng))
    arrays = [nib.gifti.GiftiDataArray(rng.normal(size=n).astype(np.float32)) for n in (N, N, N - 1)]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), str(files["L"]))


def _confounds_not_numeric(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b18", data=smooth_bold(T, rng=rng))
    text = files["confounds"].read_text().splitlines()
    text[3] = "\t".join(["oops"] + text[3].split("\t")[1:])
    files["confounds"].write_text("\n".join(text) + "\n")


def _frame_counts_differ(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b19", data=smooth_bold(T, rng=rng))
    write_func_gifti(files["R"], smooth_bold(T - 2, rng=rng)[:, N:])


# subject, builder, the broken file's name fragment, the reason
CORPUS = [
    ("b01", _truncated, "hemi-L_space-fsaverage5_bold.func.gii", "not a readable GIFTI file"),
    ("b02", _vertex_counts_differ, "hemi-R_space-fsaverage5_bold.func.gii", "40,962 vertices but its left hemisphere"),
    ("b03", _unknown_density, "hemi-L_space-fsaverage5_bold.func.gii", "5,000 vertices per hemisphere match no known"),
    ("b04", _nan_frames, "hemi-L_space-fsaverage5_bold.func.gii", "NaN or Inf in 2 of 40 frames"),
    ("b05", _inf_frames, "hemi-L_space-fsaverage5_bold.func.gii", "NaN or Inf in 1 of 40 frames"),
    ("b06", _constant_run, "hemi-L_space-fsaverage5_bold.func.gii", "cortex vertices are constant"),
    ("b07", _tr_missing, "hemi-L_space-fsaverage5_bold.func.gii", "no RepetitionTime"),
    ("b08", _tr_zero, "hemi-L_space-fsaverage5_bold.json", "RepetitionTime must be a positive number"),
    ("b09", _tr_negative, "hemi-L_space-fsaverage5_bold.json", "RepetitionTime must be a positive number"),
    ("b10", _too_short, "hemi-L_space-fsaverage5_bold.func.gii", "too short after cleaning"),
    ("b11", _confounds_wrong_length, "desc-confounds_timeseries.tsv", "37 rows but the BOLD run has 40 frames"),
    ("b12", _confounds_missing_columns, "desc-confounds_timeseries.tsv", "trans_y"),
    ("b13", _cifti_without_cortex, "space-fsLR_den-91k_bold.dtseries.nii", "no CIFTI_STRUCTURE_CORTEX_LEFT/RIGHT"),
    ("b14", _empty_file, "hemi-R_space-fsaverage5_bold.func.gii", "not a readable GIFTI file"),
    ("b15", _missing_hemisphere, "hemi-L_space-fsaverage5_bold.func.gii", "other hemisphere's .func.gii is missing"),
    ("b16", _sidecar_not_json, "hemi-L_space-fsaverage5_bold.json", "not valid JSON"),
    ("b17", _ragged_frames, "hemi-L_space-fsaverage5_bold.func.gii", "one 1-D data array per frame of equal length"),
    ("b18", _confounds_not_numeric, "desc-confounds_timeseries.tsv", "'oops' is not a number"),
    ("b19", _frame_counts_differ, "hemi-R_space-fsaverage5_bold.func.gii", "38 frames but its left hemisphere"),
]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    rng = np.random.default_rng(3)
    root, fmriprep = make_dataset(tmp_path_factory.mktemp("corpus") / "bids")
    add_gifti_run(fmriprep, "good", data=smooth_bold(T, rng=rng))
    for _, build, _, _ in CORPUS:
        build(fmriprep, rng)
    out = root.parent / "out"
    code = main([str(root), str(out), "participant", "--pixel-size", "4.8", "--no-figures", "--confounds", "motion"])
    with (out / "runs.tsv").open(newline="") as handle:
        rows = {row["subject"]: row for row in csv.DictReader(handle, delimiter="\t")}
    return code, out, rows


def test_corpus_exits_non_zero_and_the_good_run_finishes(corpus_run):
    code, out, rows = corpus_run
    assert code == 1
    assert rows["good"]["status"] == "done"
    assert len(list(out.rglob("*_desc-flat_bold.h5"))) == 1
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.h5*"))


@pytest.mark.parametrize("subject, build, filename, reason", CORPUS, ids=[c[1].__name__.strip("_") for c in CORPUS])
def test_each_broken_input_fails_with_one_line_naming_file_and_reason(corpus_run, subject, build, filename, reason):
    _, out, rows = corpus_run
    row = rows[subject]
    assert row["status"] == "failed"
    assert f"sub-{subject}_task-rest_{filename}" in row["error"], row["error"]
    assert reason in row["error"], row["error"]
    assert "\n" not in row["error"] and "Traceback" not in row["error"]
    assert not list((out / f"sub-{subject}").rglob("*")) if (out / f"sub-{subject}").exists() else True


def test_derivative_folder_without_description_is_refused(tmp_path, caplog):
    root, fmriprep = make_dataset(tmp_path / "bids", with_derivative_description=False)
    add_gifti_run(fmriprep, "01", data=smooth_bold(T, rng=np.random.default_rng(0)))
    assert main([str(root), str(tmp_path / "out"), "participant"]) == 2
    assert "fmriprep' has no dataset_description.json" in caplog.text


def test_empty_bids_dir_is_refused(tmp_path, caplog):
    (tmp_path / "bids").mkdir()
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]) == 2
    assert "not a BIDS dataset (no dataset_description.json)" in caplog.text


def test_dataset_without_surface_runs_is_refused(tmp_path, caplog):
    root, _ = make_dataset(tmp_path / "bids")
    assert main([str(root), str(tmp_path / "out"), "participant"]) == 2
    assert "no surface BOLD runs" in caplog.text


def test_stop_on_first_crash_stops_after_the_first_failure(tmp_path):
    rng = np.random.default_rng(1)
    root, fmriprep = make_dataset(tmp_path / "bids")
    add_gifti_run(fmriprep, "a1", data=smooth_bold(8, rng=rng))  # too short: fails first
    add_gifti_run(fmriprep, "a2", data=smooth_bold(T, rng=rng))
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--pixel-size", "4.8", "--no-figures",
                 "--stop-on-first-crash"]) == 1
    assert "a2" not in (out / "runs.tsv").read_text()


# --------------------------------------------------------------------------- broken per-run files (group level, validate)


def _run_path(out, subject):
    return out / f"sub-{subject}" / "func" / f"sub-{subject}_task-rest_space-fsLR_desc-flat_bold.h5"


def _edit(path, change):
    import h5py

    with h5py.File(path, "r+") as handle:
        change(handle)


def _flipped_frames(path):
    from builders import flip_bytes_in_frames

    flip_bytes_in_frames(path)


def _truncated_run(path):
    path.write_bytes(path.read_bytes()[:3000])


def _empty_run(path):
    path.write_bytes(b"")


def _external_link(path):
    import h5py

    secret = path.parent / "secret.h5"
    with h5py.File(secret, "w") as handle:
        handle["data"] = np.zeros(10, np.float32)

    def change(handle):
        del handle["mean"]
        handle["mean"] = h5py.ExternalLink(str(secret), "/data")

    _edit(path, change)


def _virtual_frames(path):
    import h5py

    other = path.parent / "other.h5"
    with h5py.File(path, "r") as handle:
        shape, dtype = handle["frames"].shape, handle["frames"].dtype
    with h5py.File(other, "w") as handle:
        handle.create_dataset("frames", shape=shape, dtype=dtype)
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[:] = h5py.VirtualSource(str(other), "frames", shape=shape)

    def change(handle):
        del handle["frames"]
        handle.create_virtual_dataset("frames", layout)

    _edit(path, change)


def _no_checksum(path):
    def change(handle):
        del handle.attrs["content_sha256"]
        handle.attrs["format_version"] = 1

    _edit(path, change)


def _missing_std(path):
    _edit(path, lambda handle: handle.__delitem__("std"))


def _float32_frames(path):
    def change(handle):
        data = handle["frames"][()].astype(np.float32)
        del handle["frames"]
        handle["frames"] = data

    _edit(path, change)


def _other_grid(path):
    from builders import write_flat_run

    write_flat_run(path, subject="r09", shape=(16, 48))


# subject, how the file is broken, the reason named with the file
RUN_FILE_CORPUS = [
    ("r01", _flipped_frames, "content checksum mismatch"),
    ("r02", _truncated_run, "not a readable HDF5 file"),
    ("r03", _empty_run, "not a readable HDF5 file"),
    ("r04", _external_link, "/mean is an external link to"),
    ("r05", _virtual_frames, "/frames is a virtual dataset that reads other files"),
    ("r06", _no_checksum, "format version 1 has no content checksum"),
    ("r07", _missing_std, "missing dataset /std"),
    ("r08", _float32_frames, "/frames is float32, expected float16"),
    ("r09", _other_grid, "grid [16, 48] at 2.4 mm differs from"),
]


@pytest.fixture(scope="module")
def broken_run_files(tmp_path_factory):
    from builders import write_flat_run

    from flatprep.pipelines.group import run_group
    from flatprep.shards import ShardOptions
    from flatprep.validate import validate_output

    out = tmp_path_factory.mktemp("run-files") / "flatprep"
    for subject in ("a1", "a2"):  # sorted first: theirs is the grid the others are compared with
        write_flat_run(_run_path(out, subject), subject=subject)
    for subject, build, _ in RUN_FILE_CORPUS:
        write_flat_run(_run_path(out, subject), subject=subject)
        build(_run_path(out, subject))
    result = run_group(out, bids_dir=None, options=ShardOptions(split_ratios=(1.0, 0.0, 0.0)), with_figures=False)
    return out, result, validate_output(out)


def test_good_run_files_are_packed_beside_broken_ones(broken_run_files):
    out, result, _ = broken_run_files
    manifest = (out / "shards" / "manifest.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in manifest[1:]] == ["sub-a1_task-rest_space-fsLR", "sub-a2_task-rest_space-fsLR"]
    assert len(result["refused"]) == len(RUN_FILE_CORPUS) and not result["failed"]


@pytest.mark.parametrize("subject, build, reason", RUN_FILE_CORPUS,
                         ids=[c[1].__name__.strip("_") for c in RUN_FILE_CORPUS])
def test_each_broken_run_file_is_refused_with_one_line_naming_it(broken_run_files, subject, build, reason):
    out, result, problems = broken_run_files
    path = _run_path(out, subject)
    (refused,) = [line for line in result["refused"] if line.startswith(f"{path}: ")]
    assert reason in refused and "\n" not in refused
    # validate names every one of them too (a file on another grid as one the manifest does not list)
    expected = "not listed in manifest.tsv" if build is _other_grid else reason
    assert any(line.startswith(f"{path}: ") and expected in line for line in problems), problems
