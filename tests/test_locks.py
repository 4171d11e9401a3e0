"""File locks between processes sharing an output folder."""

import multiprocessing

import pytest

from flatprep.exceptions import LockError
from flatprep.locks import file_lock, is_locked


def _hold(path, held, release):
    with file_lock(path):
        held.set()
        release.wait(30)


def test_a_lock_held_by_another_process_is_refused_then_released_at_its_exit(tmp_path):
    path = tmp_path / "locks" / "run.lock"
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(path, held, release))
    holder.start()
    try:
        assert held.wait(30)
        assert is_locked(path)
        with pytest.raises(LockError, match=r"run.lock: held by another process"):
            with file_lock(path, wait=False):
                pass
    finally:
        release.set()
        holder.join(30)
    assert not is_locked(path)
    with file_lock(path, wait=False) as locked:
        assert locked == path


def test_a_lock_that_cannot_be_created_names_the_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LockError, match=r"file/run.lock: cannot create the lock file"):
        with file_lock(tmp_path / "file" / "run.lock"):
            pass


def test_is_locked_is_false_for_a_missing_lock_file(tmp_path):
    assert not is_locked(tmp_path / "none.lock") and not (tmp_path / "none.lock").exists()
