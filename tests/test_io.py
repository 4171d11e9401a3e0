import json

import numpy as np
import pytest

from flatprep.exceptions import SurfaceFileError, SurfaceSpaceError
from flatprep.io import (
    InputError,
    load_cifti_dtseries,
    load_gifti_pair,
    load_surface_bold,
    read_confounds,
    read_json,
    repetition_time,
    run_repetition_time,
)
from flatprep.atlases import grayordinate_vertices

from builders import write_dtseries, write_func_gifti


def test_gifti_pair_concatenates_left_then_right(tmp_path, rng):
    lh, rh = rng.normal(size=(5, 10242)), rng.normal(size=(5, 10242))
    bold = load_gifti_pair(write_func_gifti(tmp_path / "l.func.gii", lh, 2.0), write_func_gifti(tmp_path / "r.func.gii", rh, 2.0))
    assert bold.space.name == "fsaverage5" and bold.tr == 2.0
    assert bold.data.shape == (5, 20484) and bold.data.dtype == np.float32
    np.testing.assert_allclose(bold.data[:, :10242], lh, rtol=1e-6)
    np.testing.assert_allclose(bold.data[:, 10242:], rh, rtol=1e-6)


def test_gifti_pair_with_different_vertex_counts_names_the_file(tmp_path, rng):
    left = write_func_gifti(tmp_path / "l.func.gii", rng.normal(size=(3, 10242)))
    right = write_func_gifti(tmp_path / "r.func.gii", rng.normal(size=(3, 40962)))
    with pytest.raises(SurfaceFileError, match=r"r.func.gii: 40,962 vertices but its left hemisphere l.func.gii has 10,242"):
        load_gifti_pair(left, right)


def test_gifti_of_unknown_density_is_refused(tmp_path, rng):
    path = write_func_gifti(tmp_path / "l.func.gii", rng.normal(size=(3, 5000)))
    with pytest.raises(SurfaceSpaceError, match=r"l.func.gii: 5,000 vertices per hemisphere"):
        load_gifti_pair(path, path)


def test_truncated_gifti_is_refused(tmp_path, rng):
    path = write_func_gifti(tmp_path / "l.func.gii", rng.normal(size=(3, 10242)))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(SurfaceFileError, match="l.func.gii: not a readable GIFTI file"):
        load_gifti_pair(path, path)


def test_cifti_cortex_lands_on_the_fslr_vertices(tmp_path, rng):
    path, raw = write_dtseries(tmp_path / "x.dtseries.nii", 4, 0.72, rng=rng)
    bold = load_surface_bold([path], space="fsLR")
    left, right = grayordinate_vertices()
    assert bold.space.name == "fsLR" and bold.tr == pytest.approx(0.72)
    np.testing.assert_array_equal(bold.data[:, left], raw[:, : len(left)])
    np.testing.assert_array_equal(bold.data[:, 32492 + right], raw[:, len(left):])
    medial = np.setdiff1d(np.arange(32492), left)
    assert np.all(bold.data[:, medial] == 0)


def test_cifti_reader_matches_workbench_cifti_separate(tmp_path, rng, wb_command):
    """Independent check of the grayordinate -> vertex placement, on an HCP-like layout
    (left cortex, a volume structure, right cortex) read by flatprep's own header parser."""
    import subprocess

    import nibabel as nib

    left, right = grayordinate_vertices()
    models = (nib.cifti2.BrainModelAxis.from_surface(left, 32492, "CortexLeft")
              + nib.cifti2.BrainModelAxis.from_mask(np.ones((3, 2, 2), bool), affine=np.eye(4),
                                                     name="thalamus_left")
              + nib.cifti2.BrainModelAxis.from_surface(right, 32492, "CortexRight"))
    data = rng.normal(1000, 10, size=(5, len(models))).astype(np.float32)
    path = tmp_path / "x.dtseries.nii"
    nib.save(nib.Cifti2Image(data, header=(nib.cifti2.SeriesAxis(0, 0.72, 5, unit="SECOND"), models)), str(path))
    subprocess.run([wb_command, "-cifti-separate", str(path), "COLUMN", "-metric", "CORTEX_LEFT",
                    str(tmp_path / "L.func.gii"), "-metric", "CORTEX_RIGHT", str(tmp_path / "R.func.gii")],
                   check=True, capture_output=True)
    workbench = np.concatenate([np.stack([d.data for d in nib.load(str(tmp_path / f"{h}.func.gii")).darrays])
                                for h in ("L", "R")], axis=1)
    np.testing.assert_array_equal(load_cifti_dtseries(path).data, workbench)


def test_cifti_without_cortex_is_refused(tmp_path):
    path, _ = write_dtseries(tmp_path / "x.dtseries.nii", 4, 1.0, cortex=False)
    with pytest.raises(SurfaceFileError, match="x.dtseries.nii: no CIFTI_STRUCTURE_CORTEX_LEFT/RIGHT"):
        load_cifti_dtseries(path)


def test_space_label_must_match_the_vertex_count(tmp_path, rng):
    left = write_func_gifti(tmp_path / "l.func.gii", rng.normal(size=(3, 10242)))
    with pytest.raises(SurfaceFileError, match="labelled space-fsaverage6 but has 10,242 vertices"):
        load_surface_bold([left, left], space="fsaverage6")


@pytest.mark.parametrize("value, message", [(None, "no RepetitionTime"), (0, "positive"), (-2, "positive"),
                                            ("abc", "not a number"), (float("nan"), "positive"),
                                            (True, "True is a boolean"), ("2.0", "'2.0' is not a number"),
                                            ([2.0], r"\[2.0\] is not a number"),
                                            (100, "100 s is outside the plausible range 0.1-10 s"),
                                            (0.05, "0.05 s is outside the plausible range")])
def test_repetition_time_rejects_missing_and_invalid_values(value, message):
    sidecar = {} if value is None else {"RepetitionTime": value}
    with pytest.raises(InputError, match=f"sub-01_bold.json: .*{message}"):
        repetition_time(sidecar, None, source="sub-01_bold.json")


def test_repetition_time_prefers_the_sidecar():
    assert repetition_time({"RepetitionTime": 2.0}, 1.0, source="x") == 2.0
    assert repetition_time({}, 1.5, source="x") == 1.5


def test_read_confounds_parses_na_and_checks_length(tmp_path):
    path = tmp_path / "confounds.tsv"
    path.write_text("trans_x\tframewise_displacement\n0.1\tn/a\n0.2\t0.05\n")
    columns = read_confounds(path, n_timepoints=2)
    np.testing.assert_allclose(columns["trans_x"], [0.1, 0.2])
    assert np.isnan(columns["framewise_displacement"][0])
    with pytest.raises(InputError, match="confounds.tsv: 2 rows but the BOLD run has 3 frames"):
        read_confounds(path, n_timepoints=3)


def test_read_confounds_names_bad_cells_and_ragged_rows(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("a\tb\n1\tx\n")
    with pytest.raises(InputError, match=r"c.tsv: line 2, column 'b': 'x' is not a number"):
        read_confounds(path)
    path.write_text("a\tb\n1\n")
    with pytest.raises(InputError, match="c.tsv: line 2 has 1 fields, the header has 2"):
        read_confounds(path)


def test_read_json_errors_name_the_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="s.json: not valid JSON"):
        read_json(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match="s.json: expected a JSON object"):
        read_json(path)


def test_gifti_timestep_and_cifti_series_step_follow_one_unit_rule(tmp_path, rng):
    import nibabel as nib

    data = rng.normal(size=(5, 10242))
    for step, expected in ((0.72, 0.72), (2000, 2.0)):
        left = write_func_gifti(tmp_path / f"l{step}.func.gii", data, step)
        right = write_func_gifti(tmp_path / f"r{step}.func.gii", data, step)
        path, raw = write_dtseries(tmp_path / f"x{step}.dtseries.nii", 5, step)
        assert load_gifti_pair(left, right).tr == pytest.approx(expected)
        assert load_cifti_dtseries(path).tr == pytest.approx(expected)
    # a CIFTI step stored with exponent -3 (ms) is read by nibabel in seconds
    image = nib.load(str(path))
    image.header.matrix.get_index_map(0).series_exponent = -3
    image.header.matrix.get_index_map(0).series_step = 800
    nib.save(image, str(tmp_path / "ms.dtseries.nii"))
    assert load_cifti_dtseries(tmp_path / "ms.dtseries.nii").tr == pytest.approx(0.8)


def test_cifti_series_that_is_not_time_is_refused(tmp_path):
    import nibabel as nib

    path, raw = write_dtseries(tmp_path / "x.dtseries.nii", 5, 2.0)
    models = nib.load(str(path)).header.get_axis(1)
    nib.save(nib.Cifti2Image(raw, header=(nib.cifti2.SeriesAxis(0, 2.0, 5, unit="HERTZ"), models)), str(path))
    with pytest.raises(SurfaceFileError, match=r"x.dtseries.nii: CIFTI SeriesAxis step is in 'HERTZ', not a unit"):
        load_cifti_dtseries(path)


def test_run_repetition_time_sidecar_wins_else_header_in_seconds(tmp_path, rng):
    path, _ = write_dtseries(tmp_path / "sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii", 5, 2000)
    bold = load_cifti_dtseries(path)
    assert run_repetition_time(bold, []) == 2.0  # ms step, no sidecar: 2 s, not 2000 s
    sidecar = tmp_path / "sub-01_task-rest_bold.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 0.8}))
    other = tmp_path / "sub-01_task-motor_bold.json"
    other.write_text(json.dumps({"RepetitionTime": 3.0}))
    assert run_repetition_time(bold, [other, sidecar]) == 0.8  # a sidecar of another task never applies
    assert run_repetition_time(bold, [sidecar], tr_in=12.0) == 12.0  # explicit: no plausible-range check
    # a BOLD file without BIDS entities in its name takes the sidecars it is given
    plain = load_cifti_dtseries(write_dtseries(tmp_path / "x.dtseries.nii", 5, 1.0)[0])
    assert run_repetition_time(plain, [sidecar]) == 0.8


def _hemisphere_pair(tmp_path, rng, left_tr, right_tr):
    data = rng.normal(size=(5, 10242))
    files, sidecars = [], []
    for hemi, tr in (("L", left_tr), ("R", right_tr)):
        stem = f"sub-01_task-rest_hemi-{hemi}_space-fsaverage5_bold"
        files.append(write_func_gifti(tmp_path / f"{stem}.func.gii", data))
        sidecars.append(tmp_path / f"{stem}.json")
        sidecars[-1].write_text(json.dumps({"RepetitionTime": tr}))
    return load_gifti_pair(*files), sidecars


def test_run_repetition_time_refuses_hemisphere_sidecars_that_disagree(tmp_path, rng):
    bold, sidecars = _hemisphere_pair(tmp_path, rng, 2.0, 2.5)
    with pytest.raises(InputError, match=r"hemi-R_space-fsaverage5_bold.json: RepetitionTime 2.5 s differs from "
                                         r"sub-01_task-rest_hemi-L_space-fsaverage5_bold.json \(2 s\)"):
        run_repetition_time(bold, sidecars)
    bold, sidecars = _hemisphere_pair(tmp_path, rng, 2.0, 2.0)
    assert run_repetition_time(bold, sidecars[::-1]) == 2.0


def test_run_without_any_tr_names_the_bold_file(tmp_path, rng):
    bold = load_gifti_pair(write_func_gifti(tmp_path / "l.func.gii", rng.normal(size=(3, 10242))),
                           write_func_gifti(tmp_path / "r.func.gii", rng.normal(size=(3, 10242))))
    with pytest.raises(InputError, match=r"l.func.gii: no RepetitionTime in its sidecars or those of the same "
                                         r"acquisition \(none found\) and none in the file header; add RepetitionTime "
                                         r"\(seconds\) to the sidecar, or give it with flatprep --tr-in SECONDS"):
        run_repetition_time(bold, [])


def test_run_repetition_time_takes_a_sidecar_of_the_same_acquisition_in_another_space(tmp_path, rng):
    """fMRIPrep <= 20.2 wrote RepetitionTime beside the volume only; every sidecar found must agree."""
    bold, own = _hemisphere_pair(tmp_path, rng, 2.0, 2.0)
    volume = tmp_path / "sub-01_task-rest_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json"
    volume.write_text(json.dumps({"RepetitionTime": 1.5}))
    other_run = tmp_path / "sub-01_task-rest_run-2_space-MNI152NLin2009cAsym_desc-preproc_bold.json"
    other_run.write_text(json.dumps({"RepetitionTime": 3.0}))  # another run: never looked at
    assert run_repetition_time(bold, [other_run, volume]) == 1.5
    with pytest.raises(InputError, match=r"MNI152NLin2009cAsym_res-2_desc-preproc_bold.json: RepetitionTime 1.5 s "
                                         r"differs from sub-01_task-rest_hemi-L_space-fsaverage5_bold.json \(2 s\); "
                                         r"sidecars of one acquisition must agree"):
        run_repetition_time(bold, [*own, volume])
    for path in own:
        path.write_text("{}")
    with pytest.raises(InputError, match=r"hemi-L_space-fsaverage5_bold.func.gii: no RepetitionTime in its sidecars "
                                         r"or those of the same acquisition \(sub-01_task-rest_hemi-L_space-fsaverage5"
                                         r"_bold.json, sub-01_task-rest_hemi-R_space-fsaverage5_bold.json, "
                                         r"sub-01_task-rest_run-2_space-MNI152NLin2009cAsym_desc-preproc_bold.json\)"):
        run_repetition_time(bold, [*own, other_run])


def test_cifti_header_reader_agrees_with_nibabel(tmp_path, rng, monkeypatch):
    # Plain float32 dtseries are read from the NIfTI-2 header and the CIFTI XML
    # directly (nibabel's image costs seconds per 91k file); same data and TR.
    from pathlib import Path

    import flatprep.io as flatprep_io

    path, _ = write_dtseries(tmp_path / "x.dtseries.nii", 5, 1.4, rng=rng)
    assert flatprep_io._plain_cifti_layout(Path(path)) is not None
    fast = load_cifti_dtseries(path)
    monkeypatch.setattr(flatprep_io, "_plain_cifti_layout", lambda path: None)
    slow = load_cifti_dtseries(path)
    np.testing.assert_array_equal(fast.data, slow.data)
    assert fast.tr == slow.tr == pytest.approx(1.4) and fast.space == slow.space


# --------------------------------------------------------------------------- hostile sidecars and tables


def test_read_json_names_a_file_nested_too_deep_or_too_large(tmp_path, monkeypatch):
    from flatprep import io
    from flatprep.exceptions import InputError

    deep = tmp_path / "deep_bold.json"
    deep.write_text('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(InputError, match="deep_bold.json: JSON nested too deep to read"):
        io.read_json(deep)
    monkeypatch.setattr(io, "MAX_JSON_BYTES", 1000)
    big = tmp_path / "big_bold.json"
    big.write_text('{"RepetitionTime": 2.0, "x": "' + "y" * 2000 + '"}')
    with pytest.raises(InputError, match="big_bold.json: a JSON file over 0 MiB"):
        io.read_json(big)


def test_tables_too_large_or_with_huge_cells_fail_naming_the_file(tmp_path, monkeypatch):
    from flatprep import tables
    from flatprep.exceptions import InputError
    from flatprep.io import read_confounds

    huge = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    huge.write_text("trans_x\n" + "1" * 200_000 + "\n")  # one cell over the csv module's field limit
    with pytest.raises(InputError, match="confounds_timeseries.tsv: not a readable TSV table"):
        read_confounds(huge)
    with pytest.raises(InputError, match="confounds_timeseries.tsv: not a readable TSV table"):
        tables.read_tsv(huge)
    monkeypatch.setattr(tables, "MAX_TABLE_BYTES", 1000)
    with pytest.raises(InputError, match="confounds_timeseries.tsv: the confounds table is over 0 MiB"):
        read_confounds(huge)


def test_bids_events_after_the_run_end_are_warned_naming_the_file(tmp_path):
    import warnings

    from flatprep.io import read_events

    path = tmp_path / "sub-01_task-motor_events.tsv"
    path.write_text("onset\tduration\ttrial_type\n0\t10\tleft\n55\t10\tright\n")
    with pytest.warns(UserWarning, match=r"motor_events.tsv: 1 of 2 event\(s\) end after the run's end \(last at 65 s"):
        read_events(path, run_seconds=60.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_events(path, run_seconds=65.0).onset.tolist() == [0.0, 55.0]
        read_events(path)  # no run length: nothing to compare with


def test_a_nifti_gz_that_inflates_past_its_declared_size_is_read_within_it(tmp_path):
    """Frames are read through the header's shape: a gzip stream that goes on for 256 MiB is never inflated."""
    import gzip
    import subprocess
    import sys
    import zlib

    import nibabel as nib

    frames = np.arange(6 * 7 * 8 * 5, dtype=np.float32).reshape(6, 7, 8, 5)
    path = tmp_path / "sub-01_task-rest_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz"
    nib.save(nib.Nifti1Image(frames, np.eye(4)), path)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # a second gzip member: readers take it as more data
    tail = b"".join(packer.compress(bytes(2**20)) for _ in range(256)) + packer.flush()
    path.write_bytes(path.read_bytes() + tail)
    assert len(gzip.decompress(path.read_bytes()[: len(path.read_bytes()) - len(tail)])) < 2**20
    script = ("import resource\nimport numpy as np\nfrom flatprep.io import open_volume_bold\n"
              "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"volume = open_volume_bold({str(path)!r})\n"
              "total = sum(float(block.sum()) for _, block in volume.iter_frames(chunk_frames=2))\n"
              "print(total, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert float(result[0]) == float(frames.sum()) and int(result[1]) < 64, result
