from pathlib import Path

import pytest

from flatprep.pipelines.cli.parser import parse_args


def _exit_code(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    return exc.value.code, capsys.readouterr().err


def test_output_inside_the_input_is_refused(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    code, err = _exit_code([str(tmp_path / "bids"), str(tmp_path / "bids" / "out"), "participant"], capsys)
    assert code == 2 and "is inside the input BIDS folder" in err and "derivatives" in err


def test_output_equal_to_the_input_is_refused(tmp_path, capsys):
    code, err = _exit_code([str(tmp_path), str(tmp_path), "participant"], capsys)
    assert code == 2 and "is the input BIDS folder" in err


def test_output_under_derivatives_is_accepted(tmp_path):
    args = parse_args([str(tmp_path), str(tmp_path / "derivatives" / "flatprep"), "participant"])
    assert args.scheduler == "in-process" and args.work_dir == tmp_path / "derivatives" / "flatprep" / ".work"


@pytest.mark.parametrize("extra, message", [
    (["--nprocs", "0"], "--nprocs must be a positive integer, got '0'"),
    (["--tr", "-1"], "--tr must be a positive number of seconds, got '-1'"),
    (["--dummy-scans", "x"], "--dummy-scans must be a non-negative integer, got 'x'"),
    (["--space", "MNI152"], "invalid choice: 'MNI152'"),
    (["-d", "fmriprep=/no/such/folder"], "derivatives folder does not exist: /no/such/folder"),
    (["--bids-filter-file", "/no/such.json"], "--bids-filter-file: file does not exist: /no/such.json"),
])
def test_bad_arguments_exit_with_code_2_naming_the_value(tmp_path, capsys, extra, message):
    code, err = _exit_code([str(tmp_path), str(tmp_path / "out"), "participant", *extra], capsys)
    assert code == 2 and message in err


def test_missing_bids_dir_exits_2(tmp_path, capsys):
    code, err = _exit_code([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"], capsys)
    assert code == 2 and "folder does not exist" in err


def test_participant_label_and_scheduler_defaults(tmp_path):
    (tmp_path / "bids").mkdir()
    args = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--participant-label", "sub-01", "02",
                       "--nprocs", "2", "--confounds", "motion"])
    assert args.participant_label == ["sub-01", "02"] and args.scheduler == "local"
    assert args.confounds == "motion"


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0
    for option in ("--participant-label", "--session-label", "--task", "--space", "--derivatives",
                   "--bids-filter-file", "--work-dir", "--nprocs", "--scheduler", "--tr", "--confounds",
                   "--dummy-scans", "--force", "--stop-on-first-crash", "--verbose"):
        assert option in text
    assert "(default: 1.0)" in text


@pytest.mark.parametrize("value", ["bogus", "tcp://", "slurm2"])
def test_unknown_scheduler_exits_2_with_one_error_line(tmp_path, capsys, value):
    code, err = _exit_code([str(tmp_path), str(tmp_path / "out"), "participant", "--scheduler", value], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (f"flatprep: error: --scheduler must be one of in-process, local, slurm or a Dask "
                                    f"scheduler address (tcp://HOST:PORT), got {value!r}")


@pytest.mark.parametrize("value", ["in-process", "local", "slurm", "tcp://10.0.0.5:8786", "localhost:8786"])
def test_known_schedulers_and_addresses_are_accepted(tmp_path, value):
    (tmp_path / "bids").mkdir()
    args = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--scheduler", value])
    assert args.scheduler == value


def test_output_path_that_is_a_file_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    target = tmp_path / "out.txt"
    target.write_text("not a folder")
    code, err = _exit_code([str(tmp_path / "bids"), str(target), "participant"], capsys)
    assert code == 2 and err.splitlines()[-1] == f"flatprep: error: output folder {target} is a file; give a folder"
    code, err = _exit_code([str(tmp_path / "bids"), str(target / "sub"), "participant"], capsys)
    assert code == 2 and f"output folder {target / 'sub'} is inside {target}, which is a file" in err


def test_output_path_that_is_not_writable_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    import os

    (tmp_path / "bids").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    code, err = _exit_code([str(tmp_path / "bids"), str(locked / "out"), "participant"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (f"flatprep: error: output folder {locked / 'out'} is not writable "
                                    f"(no write permission on {locked})")


def test_tr_in_must_be_a_positive_number(tmp_path, capsys):
    code, err = _exit_code([str(tmp_path), str(tmp_path / "out"), "participant", "--tr-in", "true"], capsys)
    assert code == 2 and "--tr-in must be a positive number of seconds, got 'true'" in err
    (tmp_path / "bids").mkdir()
    assert parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--tr-in", "12"]).tr_in == 12.0


@pytest.mark.parametrize("command, argv", [
    ("validate", ["nope"]), ("embed", ["nope", "out"]), ("probe", ["nope", ".", ".", "out"])])
def test_commands_refuse_a_missing_folder_naming_it(tmp_path, monkeypatch, capsys, command, argv):
    import importlib

    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"flatprep.pipelines.cli.{command}").main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    name = {"validate": "output_dir", "embed": "checkpoint", "probe": "embeddings_dir"}[command]
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"{name}: folder does not exist: nope")
