import os
import stat

import pytest

from flatprep.atomic import atomic_path, write_text


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    path = write_text(tmp_path / "a.txt", "hello")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert path.read_text() == "hello"


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
