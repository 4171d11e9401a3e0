"""Tests of flatprep.progress: log lines when piped, a bar on a terminal, failures always shown."""

import io
import logging

from flatprep.progress import Progress

LOGGER = logging.getLogger("flatprep.test_progress")


def test_piped_output_gets_one_line_per_item(caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER.name)
    progress = Progress(2, desc="participant", unit="run", logger=LOGGER)
    assert progress.bar is None  # pytest captures stderr: not a terminal
    progress.item("sub-01_task-rest done (1.0 s)")
    progress.item("sub-02_task-rest failed: x.gii: no such file", level=logging.ERROR)
    progress.close()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "[1/2] sub-01_task-rest done (1.0 s)"),
        (logging.ERROR, "[2/2] sub-02_task-rest failed: x.gii: no such file")]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_and_still_sees_failures(caplog, monkeypatch):
    screen = _Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    caplog.set_level(logging.DEBUG, logger=LOGGER.name)
    progress = Progress(2, desc="group", unit="shard", logger=LOGGER)
    progress.item("shard-00000_flatclips.h5 written")
    progress.item("shard-00001_flatclips.h5 failed: disk full", level=logging.ERROR)
    progress.close()
    assert progress.bar.n == 2 and "group" in screen.getvalue() and "2/2" in screen.getvalue()
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.ERROR]
