"""pipelines.outputs: BIDS-derivative names from bids_specs/, sidecars, dataset description, BIDS URIs."""

import json

import h5py
import pytest

from flatprep import __version__
from flatprep.h5 import read_run_attrs
from flatprep.pipelines.bids import output_entities
from flatprep.pipelines.outputs import (BIDSIGNORE, bids_uri, derivative_path, existing_figures, figure_path,
                                        run_figure_paths, write_dataset_description)

RUN = {"subject": "01", "task": "rest", "space": "fsLR"}
FLAT = {"desc": "flat", "suffix": "bold", "extension": ".h5"}


@pytest.mark.parametrize("entities, relative", [
    ({}, "sub-01/func/sub-01_task-rest_space-fsLR_den-91k_desc-flat_bold.h5"),
    ({"session": "2", "run": 3}, "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-3_space-fsLR_den-91k_desc-flat_bold.h5"),
    ({"echo": 2, "part": "mag"}, "sub-01/func/sub-01_task-rest_echo-2_part-mag_space-fsLR_den-91k_desc-flat_bold.h5"),
    ({"direction": "PA"}, "sub-01/func/sub-01_task-rest_dir-PA_space-fsLR_den-91k_desc-flat_bold.h5"),
    ({"ceagent": "gd", "reconstruction": "moco", "direction": "LR", "run": 1, "acquisition": "mb"},
     "sub-01/func/sub-01_task-rest_acq-mb_ce-gd_rec-moco_dir-LR_run-1_space-fsLR_den-91k_desc-flat_bold.h5"),
    ({"space": "fsaverage5"}, "sub-01/func/sub-01_task-rest_space-fsaverage5_desc-flat_bold.h5"),
    ({"space": "MNI152NLin6Asym", "resolution": "2"},
     "sub-01/func/sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-flat_bold.h5"),
])
def test_run_names_carry_every_entity_in_bids_order(tmp_path, entities, relative):
    path = derivative_path(tmp_path, output_entities(RUN | entities) | FLAT)
    assert path == tmp_path / relative
    sidecar = derivative_path(tmp_path, output_entities(RUN | entities) | FLAT | {"extension": ".json"})
    assert sidecar == path.with_suffix(".json")


def test_figure_report_and_shard_names_come_from_the_patterns(tmp_path):
    figure = figure_path(tmp_path, output_entities(RUN | {"session": "2"}), "tsnr", "flatmap")
    report = derivative_path(tmp_path, {"subject": "01", "session": "2", "suffix": "report"})
    shard = derivative_path(tmp_path, {"shard": "00003", "suffix": "flatclips"})
    assert figure == tmp_path / "sub-01/figures/sub-01_ses-2_task-rest_space-fsLR_den-91k_desc-tsnr_flatmap.png"
    assert report == tmp_path / "sub-01_ses-2_report.html"
    assert shard == tmp_path / "shards/shard-00003_flatclips.h5"


def test_entities_no_pattern_fits_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no output path pattern fits entities"):
        derivative_path(tmp_path, {"subject": "01", "suffix": "bold", "extension": ".nii.gz"})


def test_run_figures_listed_by_kind(tmp_path):
    names = [p.name.split("_desc-")[1] for p in run_figure_paths(tmp_path, RUN)]
    # The coverage map is drawn only where coverage is below 100 %: a complete run need not have it.
    assert names == ["mean_flatmap.png", "tsnr_flatmap.png", "frames_flatmap.png", "carpet_carpet.png",
                     "motion_motion.png"]
    assert len(run_figure_paths(tmp_path, RUN, with_motion=False)) == 4
    assert run_figure_paths(tmp_path, RUN, with_ribbon=True)[-1].name.endswith("_desc-ribbon_flatmap.png")
    tsnr = figure_path(tmp_path, RUN, "tsnr", "flatmap")
    tsnr.parent.mkdir(parents=True)
    tsnr.write_bytes(b"png")
    assert existing_figures(tmp_path, RUN) == [("Temporal SNR (mean / std of the cleaned signal)",
                                               "sub-01/figures/sub-01_task-rest_space-fsLR_desc-tsnr_flatmap.png")]


def test_bids_uri_names_the_innermost_dataset(tmp_path):
    raw, prep = tmp_path / "raw", tmp_path / "raw" / "derivatives" / "fmriprep"
    names = {"raw": str(raw), "fmriprep": str(prep)}
    assert bids_uri(prep / "sub-01" / "x.json", names) == "bids:fmriprep:sub-01/x.json"
    assert bids_uri(raw / "sub-01" / "y.json", names) == "bids:raw:sub-01/y.json"
    assert bids_uri(tmp_path / "elsewhere.tsv", names) == (tmp_path / "elsewhere.tsv").as_uri()


def test_dataset_description_and_bidsignore(tmp_path):
    path = write_dataset_description(tmp_path, sources={"raw": str(tmp_path / "bids")})
    description = json.loads(path.read_text())
    assert description["DatasetType"] == "derivative"
    assert all(entry["Version"] == __version__ for entry in description["GeneratedBy"])
    assert description["SourceDatasets"] == [{"URL": (tmp_path / "bids").as_uri(), "Name": "raw"}]
    assert (tmp_path / ".bidsignore").read_text().splitlines() == list(BIDSIGNORE)


def test_sidecars_describe_the_sample_runs(participant_out, sample_bids):
    truth = json.loads((sample_bids / "sourcedata" / "flatprep-sample" / "ground_truth.json").read_text())
    sidecars = sorted(participant_out.glob("sub-*/func/*_desc-flat_bold.json"))
    assert len(sidecars) == 4
    for sidecar in sidecars:
        subject = sidecar.name.split("_")[0]
        expected = next(s for s in truth["subjects"] if s["participant_id"] == subject)
        task = sidecar.name.split("_task-")[1].split("_")[0]
        run = next(r for r in expected["runs"] if r["task"] == task)
        side = json.loads(sidecar.read_text())
        with h5py.File(sidecar.with_suffix(".h5")) as handle:
            n_frames = handle["frames"].shape[0]
        assert side["OriginalRepetitionTime"] == expected["repetition_time"] and side["RepetitionTime"] == 1.0
        assert side["NonSteadyStateVolumesDropped"] == run["n_dummy"]
        assert side["NumberOfFrames"] == n_frames
        assert (n_frames - 1) * 1.0 <= (run["n_frames"] - run["n_dummy"] - 1) * expected["repetition_time"]
        assert side["StorageDType"] == "float16" and side["Cleaning"]["target_tr"] == 1.0
        assert side["FlatGrid"] == read_run_attrs(sidecar.with_suffix(".h5"))[1]
        assert side["FlatGrid"]["pixel_size_mm"] == 2.4 and side["FlatGrid"]["space"] == "fsLR"
        stem = sidecar.name.split("_space-")[0]
        assert f"bids:raw:{subject}/func/{stem}_bold.json" in side["Sources"]
        assert any(uri.startswith(f"bids:fmriprep:{subject}/func/{stem}_") for uri in side["Sources"])
