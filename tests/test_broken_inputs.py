"""A corpus of broken inputs: each fails alone with one clear line, the rest finish."""

import csv
import re
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


def _sidecars_say(fmriprep, subject, left, right=None, rng=None):
    """A run whose hemisphere sidecars give RepetitionTime ``left`` and ``right`` (raw JSON values)."""
    add_gifti_run(fmriprep, subject, data=smooth_bold(T, rng=rng), sidecar=False)
    for hemi, value in (("L", left), ("R", left if right is None else right)):
        write_json(_func(fmriprep, subject) / f"{_stem(subject, hemi)}.json", {"RepetitionTime": value})


def _tr_boolean(fmriprep, rng):
    _sidecars_say(fmriprep, "b20", True, rng=rng)


def _tr_string(fmriprep, rng):
    _sidecars_say(fmriprep, "b21", "2.0", rng=rng)


def _tr_too_long(fmriprep, rng):
    _sidecars_say(fmriprep, "b22", 100, rng=rng)


def _tr_too_short(fmriprep, rng):
    _sidecars_say(fmriprep, "b23", 0.01, rng=rng)


def _tr_hemispheres_disagree(fmriprep, rng):
    _sidecars_say(fmriprep, "b24", 2.0, 1.5, rng=rng)


def _tr_null(fmriprep, rng):
    _sidecars_say(fmriprep, "b25", None, rng=rng)


def _timestep_not_a_number(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b26", data=smooth_bold(T, rng=rng), sidecar=False)
    data = smooth_bold(T, rng=rng)
    write_func_gifti(files["L"], data[:, :N], tr="fast")
    write_func_gifti(files["R"], data[:, N:], tr="fast")


def _cifti_header_tr_out_of_range(fmriprep, rng):
    # No sidecar: the header decides, and 50 s is no fMRI TR.
    write_dtseries(_func(fmriprep, "b27") / "sub-b27_task-rest_space-fsLR_den-91k_bold.dtseries.nii", T, 50.0)


def _cifti_series_in_hertz(fmriprep, rng):
    import nibabel as nib

    name = "sub-b28_task-rest_space-fsLR_den-91k_bold.dtseries.nii"
    path, data = write_dtseries(_func(fmriprep, "b28") / name, T, 2.0)
    image = nib.load(str(path))
    series = nib.cifti2.SeriesAxis(0, 2.0, T, unit="HERTZ")
    nib.save(nib.Cifti2Image(data, header=(series, image.header.get_axis(1))), str(path))


def _subject_label_with_space(fmriprep, rng):
    add_gifti_run(fmriprep, "b29 x", data=smooth_bold(T, rng=rng))


def _subject_label_not_ascii(fmriprep, rng):
    add_gifti_run(fmriprep, "b30\u00e9", data=smooth_bold(T, rng=rng))


def _named_gifti_run(fmriprep, subject, middle, rng):
    data = smooth_bold(T, rng=rng)
    for index, hemi in enumerate(("L", "R")):
        name = f"sub-{subject}_task-rest_{middle}_hemi-{hemi}_space-fsaverage5_bold"
        write_func_gifti(_func(fmriprep, subject) / f"{name}.func.gii", data[:, index * N:(index + 1) * N], tr=2.0)


def _run_label_not_a_number(fmriprep, rng):
    _named_gifti_run(fmriprep, "b31", "run-x", rng)


def _unknown_entity(fmriprep, rng):
    _named_gifti_run(fmriprep, "b32", "foo-bar", rng)


def _label_with_hyphen(fmriprep, rng):
    _named_gifti_run(fmriprep, "b33", "acq-a-b", rng)


def _inherited_sidecar_not_a_number(fmriprep, rng):
    # No derivative sidecar: the raw subject-level sidecar applies by BIDS inheritance.
    add_gifti_run(fmriprep, "b34", data=smooth_bold(T, rng=rng), sidecar=False)
    write_json(Path(fmriprep).parents[1] / "sub-b34" / "sub-b34_task-rest_bold.json", {"RepetitionTime": "slow"})


def _external_data(fmriprep, rng):
    # Its arrays name a file outside the dataset: nothing is read from it.
    secret = Path(fmriprep).parents[2] / "secret.bin"
    secret.write_bytes(np.zeros(N, np.float32).tobytes())
    files = add_gifti_run(fmriprep, "b35", data=smooth_bold(T, rng=rng))
    text = re.sub(rb'Encoding="[A-Za-z0-9]+"', b'Encoding="ExternalFileBinary" ExternalFileName="'
                  + str(secret).encode() + b'" ExternalFileOffset="0"', files["L"].read_bytes())
    files["L"].write_bytes(text)


def _decompression_bomb(fmriprep, rng):
    # Frame 1 of a 40 x 10,242 run inflates to 64 MiB.
    import base64
    import zlib

    files = add_gifti_run(fmriprep, "b36", data=smooth_bold(T, rng=rng))
    packer = zlib.compressobj(9)
    packed = b"".join(packer.compress(bytes(2**20)) for _ in range(64)) + packer.flush()
    text = files["L"].read_bytes()
    first = text.index(b"<Data>", text.index(b"<Data>") + 1) + 6
    files["L"].write_bytes(text[:first] + base64.b64encode(packed) + text[text.index(b"</Data>", first):])


def _sidecar_nested_too_deep(fmriprep, rng):
    add_gifti_run(fmriprep, "b37", data=smooth_bold(T, rng=rng))
    (_func(fmriprep, "b37") / f"{_stem('b37', 'L')}.json").write_text(
        '{"RepetitionTime": 2, "x": ' + "[" * 200_000 + "]" * 200_000 + "}")


def _sidecar_too_large(fmriprep, rng):
    add_gifti_run(fmriprep, "b38", data=smooth_bold(T, rng=rng))
    (_func(fmriprep, "b38") / f"{_stem('b38', 'L')}.json").write_text(
        '{"RepetitionTime": 2, "x": "' + "y" * (17 * 2**20) + '"}')


def _control_character_in_name(fmriprep, rng):
    _named_gifti_run(fmriprep, "b39", "acq-a\nb", rng)


def _tr_differs_from_the_volume_sidecar(fmriprep, rng):
    add_gifti_run(fmriprep, "b40", data=smooth_bold(T, rng=rng), tr=2.0)
    write_json(_func(fmriprep, "b40") / "sub-b40_task-rest_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json",
               {"RepetitionTime": 1.5})


def _subject_in_another_subjects_folder(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b41", data=smooth_bold(T, rng=rng))
    other = _func(fmriprep, "b41x")
    other.mkdir(parents=True)
    for path in _func(fmriprep, "b41").iterdir():
        path.rename(other / path.name)
    _func(fmriprep, "b41").rmdir()
    assert not files["L"].exists()


def _confounds_cell_too_large(fmriprep, rng):
    files = add_gifti_run(fmriprep, "b42", data=smooth_bold(T, rng=rng))
    lines = files["confounds"].read_text().splitlines()
    lines[2] = "\t".join(["1" * 200_000] + lines[2].split("\t")[1:])
    files["confounds"].write_text("\n".join(lines) + "\n")


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
    ("b20", _tr_boolean, "hemi-L_space-fsaverage5_bold.json", "RepetitionTime True is a boolean"),
    ("b21", _tr_string, "hemi-L_space-fsaverage5_bold.json", "RepetitionTime '2.0' is not a number"),
    ("b22", _tr_too_long, "hemi-L_space-fsaverage5_bold.json", "RepetitionTime 100 s is outside the plausible range"),
    ("b23", _tr_too_short, "hemi-L_space-fsaverage5_bold.json", "RepetitionTime 0.01 s is outside the plausible range"),
    ("b24", _tr_hemispheres_disagree, "hemi-R_space-fsaverage5_bold.json",
     "RepetitionTime 1.5 s differs from sub-b24_task-rest_hemi-L_space-fsaverage5_bold.json (2 s)"),
    ("b25", _tr_null, "hemi-L_space-fsaverage5_bold.json", "RepetitionTime None is not a number"),
    ("b26", _timestep_not_a_number, "hemi-L_space-fsaverage5_bold.func.gii", "TimeStep='fast' is not a number"),
    ("b27", _cifti_header_tr_out_of_range, "space-fsLR_den-91k_bold.dtseries.nii",
     "header TR 50 s is outside the plausible range 0.1-10 s"),
    ("b28", _cifti_series_in_hertz, "space-fsLR_den-91k_bold.dtseries.nii", "SeriesAxis step is in 'HERTZ'"),
    ("b29 x", _subject_label_with_space, "hemi-L_space-fsaverage5_bold.func.gii", "sub label 'b29 x' is not valid"),
    ("b30\u00e9", _subject_label_not_ascii, "hemi-L_space-fsaverage5_bold.func.gii",
     "sub label 'b30\u00e9' is not valid"),
    ("b31", _run_label_not_a_number, "run-x_hemi-L_space-fsaverage5_bold.func.gii", "cannot read run label 'x'"),
    ("b32", _unknown_entity, "foo-bar_hemi-L_space-fsaverage5_bold.func.gii", "'foo' is not a BIDS entity"),
    ("b33", _label_with_hyphen, "acq-a-b_hemi-L_space-fsaverage5_bold.func.gii", "acq label 'a-b' is not valid"),
    ("b34", _inherited_sidecar_not_a_number, "bold.json", "RepetitionTime 'slow' is not a number"),
    ("b35", _external_data, "hemi-L_space-fsaverage5_bold.func.gii",
     "a data array is stored in another file (Encoding ExternalFileBinary); flatprep reads only data inside"),
    ("b36", _decompression_bomb, "hemi-L_space-fsaverage5_bold.func.gii",
     "data array 1 inflates to more than the 40,968 bytes its header declares"),
    ("b37", _sidecar_nested_too_deep, "hemi-L_space-fsaverage5_bold.json", "JSON nested too deep to read"),
    ("b38", _sidecar_too_large, "hemi-L_space-fsaverage5_bold.json", "a JSON file over 16 MiB"),
    ("b39", _control_character_in_name, "acq-a\\nb_hemi-L_space-fsaverage5_bold.func.gii",
     "the file name holds the control character '\\n'; rename the file"),
    ("b40", _tr_differs_from_the_volume_sidecar, "space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json",
     "RepetitionTime 1.5 s differs from sub-b40_task-rest_hemi-L_space-fsaverage5_bold.json (2 s); "
     "sidecars of one acquisition must agree"),
    ("b41", _subject_in_another_subjects_folder, "hemi-L_space-fsaverage5_bold.func.gii",
     "folder 'sub-b41x' does not match the file name (sub-b41)"),
    ("b42", _confounds_cell_too_large, "desc-confounds_timeseries.tsv", "not a readable TSV table"),
]


def _ms_series_without_sidecar(fmriprep, rng):
    write_dtseries(_func(fmriprep, "c01") / "sub-c01_task-rest_space-fsLR_den-91k_bold.dtseries.nii", T, 2000.0)
    write_confounds(_func(fmriprep, "c01") / "sub-c01_task-rest_desc-confounds_timeseries.tsv", T)


def _no_sidecar_anywhere(fmriprep, rng):
    files = add_gifti_run(fmriprep, "c02", data=smooth_bold(T, rng=rng), sidecar=False)
    data = smooth_bold(T, rng=rng)
    write_func_gifti(files["L"], data[:, :N], tr=1.5)
    write_func_gifti(files["R"], data[:, N:], tr=1.5)


def _ms_timestep_without_sidecar(fmriprep, rng):
    files = add_gifti_run(fmriprep, "c03", data=smooth_bold(T, rng=rng), sidecar=False)
    data = smooth_bold(T, rng=rng)
    write_func_gifti(files["L"], data[:, :N], tr=800)
    write_func_gifti(files["R"], data[:, N:], tr=800)


def _directions(fmriprep, rng):
    for direction, tr in (("AP", 2.0), ("PA", 1.5)):
        _named_gifti_run(fmriprep, "c04", f"dir-{direction}", rng)
        write_confounds(_func(fmriprep, "c04") / f"sub-c04_task-rest_dir-{direction}_desc-confounds_timeseries.tsv", T)
        for hemi in ("L", "R"):
            stem = f"sub-c04_task-rest_dir-{direction}_hemi-{hemi}_space-fsaverage5_bold"
            write_json(_func(fmriprep, "c04") / f"{stem}.json", {"RepetitionTime": tr})


def _inherited_subject_sidecar(fmriprep, rng):
    add_gifti_run(fmriprep, "c05", data=smooth_bold(T, rng=rng), sidecar=False)
    write_json(Path(fmriprep).parents[1] / "sub-c05" / "sub-c05_task-rest_bold.json", {"RepetitionTime": 0.8})


# Odd but valid inputs: each must finish with the right TR. builder, run label, TR in
ODD_BUT_VALID = [
    (_ms_series_without_sidecar, "sub-c01_task-rest_space-fsLR", 2.0),
    (_no_sidecar_anywhere, "sub-c02_task-rest_space-fsaverage5", 1.5),
    (_ms_timestep_without_sidecar, "sub-c03_task-rest_space-fsaverage5", 0.8),
    (_directions, "sub-c04_task-rest_dir-AP_space-fsaverage5", 2.0),
    (_directions, "sub-c04_task-rest_dir-PA_space-fsaverage5", 1.5),
    (_inherited_subject_sidecar, "sub-c05_task-rest_space-fsaverage5", 0.8),
]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    rng = np.random.default_rng(3)
    root, fmriprep = make_dataset(tmp_path_factory.mktemp("corpus") / "bids")
    add_gifti_run(fmriprep, "good", data=smooth_bold(T, rng=rng))
    for _, build, _, _ in CORPUS:
        build(fmriprep, rng)
    for build in dict.fromkeys(build for build, _, _ in ODD_BUT_VALID):
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
    assert len(list(out.rglob("*_desc-flat_bold.h5"))) == 1 + len(ODD_BUT_VALID)
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


@pytest.mark.parametrize("build, label, tr_in", ODD_BUT_VALID, ids=[c[1] for c in ODD_BUT_VALID])
def test_odd_but_valid_inputs_finish_with_the_right_tr(corpus_run, build, label, tr_in):
    _, out, _ = corpus_run
    with (out / "runs.tsv").open(newline="") as handle:
        row = {r["run"]: r for r in csv.DictReader(handle, delimiter="\t")}[label]
    assert row["status"] == "done" and float(row["tr_in"]) == tr_in, row["error"]
    assert (out / row["out_file"]).exists() and Path(row["out_file"]).name.startswith(f"{label}_")


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
    # Each subject its own frames: identical frames under two names are one scan, packed once.
    for seed, subject in enumerate(("a1", "a2")):  # sorted first: theirs is the grid the others are compared with
        write_flat_run(_run_path(out, subject), subject=subject, rng=np.random.default_rng(seed))
    for seed, (subject, build, _) in enumerate(RUN_FILE_CORPUS, start=2):
        write_flat_run(_run_path(out, subject), subject=subject, rng=np.random.default_rng(seed))
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


# --------------------------------------------------------------------------- implausible volumes


def test_a_volume_whose_headers_miss_the_ribbon_is_refused_naming_the_file(tmp_path):
    import nibabel as nib

    from flatprep.sample import write_sample_dataset

    root = tmp_path / "bids"
    write_sample_dataset(root, n_subjects=1, duration=20.0, tasks=("rest",), spaces=("MNI152NLin6Asym",), seed=2)
    func = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    bold = func / "sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz"
    for path in (bold, func / "sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz"):
        image = nib.load(path)  # both headers claim 2.5 mm voxels about the same origin
        affine = image.affine.copy()
        affine[:3, :3] *= 1.25
        nib.save(type(image)(np.asarray(image.dataobj), affine, image.header), path)
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--pixel-size", "2.4", "--no-figures"]) == 1
    with (out / "runs.tsv").open(newline="") as handle:
        (row,) = csv.DictReader(handle, delimiter="\t")
    assert row["status"] == "failed" and row["error"].startswith(f"{bold}: only ")
    assert "of the flat map's pixels sample the cortical ribbon inside the brain mask" in row["error"]
    assert "at least 50% must be sampled" in row["error"] and not list(out.rglob("*.h5"))
