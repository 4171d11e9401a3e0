"""Conventions shared by the six commands (pipelines/cli/common.py, logs.py, help.py):
--version, -q / default / -v / -vv, and one line for every usage error."""

import importlib
import logging
import shutil

import pytest

from flatprep import __version__

COMMANDS = {"run": "flatprep", "sample": "flatprep-sample", "validate": "flatprep-validate",
            "train": "flatprep-train", "embed": "flatprep-embed", "probe": "flatprep-probe"}


def _main(name):
    return importlib.import_module(f"flatprep.pipelines.cli.{name}").main


@pytest.fixture
def log_levels():
    """Put back the logger levels a command's configure_logging changed."""
    from flatprep.pipelines.cli.logs import _NOISY

    names = ["", "flatprep", *_NOISY]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_prints_its_version(name, capsys):
    with pytest.raises(SystemExit) as exc:
        _main(name)(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"{COMMANDS[name]} {__version__}\n"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_usage_error_is_one_line_with_exit_status_2(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _main(name)([str(tmp_path), str(tmp_path / "out"), "--no-such-option"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(f"{COMMANDS[name]}: error: ")
    with pytest.raises(SystemExit) as exc:
        _main(name)(["-q", "-v"])
    assert capsys.readouterr().err == (f"{COMMANDS[name]}: error: argument -v/--verbose: not allowed with argument "
                                       "-q/--quiet\n")


def test_sample_into_a_non_empty_folder_names_the_option_not_the_python_argument(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        _main("sample")([str(tmp_path)])
    assert exc.value.code == 2 and capsys.readouterr().err == (
        f"flatprep-sample: error: {tmp_path}: folder is not empty; choose an empty or new folder, or pass "
        "--overwrite to replace the sample files in it\n")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_embed_on_a_device_this_torch_lacks_is_one_usage_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as exc:
        _main("embed")([str(tmp_path), str(tmp_path / "emb"), "--device", "cuda"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (f"flatprep-embed: error: --device cuda: this torch has no CUDA support (torch "
                                       f"{torch.__version__}); use --device cpu\n")


@pytest.mark.parametrize("verbosity, own, others", [(-1, logging.WARNING, logging.WARNING),
                                                     (0, logging.INFO, logging.WARNING),
                                                     (1, logging.DEBUG, logging.WARNING),
                                                     (2, logging.DEBUG, logging.DEBUG)])
def test_logging_levels_for_flatprep_and_for_the_libraries(verbosity, own, others, log_levels):
    from flatprep.pipelines.cli.logs import configure_logging

    configure_logging(verbosity)
    assert logging.getLogger("flatprep.pipelines.runner").getEffectiveLevel() == own
    for name in ("matplotlib.font_manager", "numexpr.utils", "nipype.workflow", "distributed.scheduler", "bids"):
        assert logging.getLogger(name).getEffectiveLevel() == others, name


def test_participant_levels_show_flatprep_messages_for_each(sample_bids, participant_out, tmp_path, caplog,
                                                            log_levels):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    args = [str(sample_bids), str(out), "participant", "--pixel-size", "2.4", "--participant-label", "01",
            "--task", "rest"]
    bold = next(sample_bids.glob("derivatives/fmriprep/sub-01/func/sub-01_task-rest_space-fsLR_*bold.dtseries.nii"))

    def run(*flags):
        caplog.clear()
        assert _main("run")([*args, *flags]) == 0
        return [(r.name, r.levelno, r.getMessage()) for r in caplog.records]

    quiet = run("-q")
    assert [r for r in quiet if r[0].startswith("flatprep") and r[1] < logging.WARNING] == []
    default = run()
    messages = [m for _, _, m in default]
    assert "[1/1] sub-01_task-rest_space-fsLR complete (verified) (" in "\n".join(messages)
    assert any(m.startswith("participant level: 0 done, 0 redone, 1 complete (verified), 0 failed") for m in messages)
    assert f"runs table: {out / 'runs.tsv'}" in messages and f"reports: {out / 'sub-01.html'}" in messages
    assert not [r for r in default if r[1] < logging.INFO or not r[0].startswith("flatprep")]
    detailed = [m for _, _, m in run("-v")]
    assert f"sub-01_task-rest_space-fsLR: space fsLR, input {bold}" in detailed
    assert f"sub-01_task-rest_space-fsLR: space fsLR, input {bold}" not in messages
