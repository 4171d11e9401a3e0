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


def test_disk_full_names_the_target_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from flatprep.exceptions import OutputWriteError

    path = write_text(tmp_path / "runs.tsv", "old")

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputWriteError, match=r"runs.tsv: cannot write \(No space left on device\); free some space"):
        write_text(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["runs.tsv"]


def test_errors_that_are_not_about_the_write_pass_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-input"):
        with atomic_path(tmp_path / "out.txt"):
            open(tmp_path / "no-such-input")
    assert not list(tmp_path.iterdir())


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys
    import time

    from flatprep.atomic import STALE_SECONDS, _host, remove_stale_temporaries, temporary_files

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "sub-01" / "func"
    folder.mkdir(parents=True)
    killed = folder / f".sub-01_desc-flat_bold.h5.{dead.pid}-{_host()}.k2x9_abc.tmp"
    live = folder / f".sub-01_desc-flat_bold.json.{os.getppid()}-{_host()}.q81mzz0a.tmp"
    elsewhere = tmp_path / f".shard-00000_flatclips.h5.4242-othernode.abcdefgh.tmp"
    old = tmp_path / "sub-01" / ".sub-01_desc-mean_flatmap.png.r2d2c3po.png"  # a name from before pid and host
    for path in (killed, live, elsewhere, old):
        path.write_bytes(b"partial")
    long_ago = time.time() - STALE_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    (tmp_path / "sub-01.html").write_text("kept")
    (tmp_path / ".bidsignore").write_text("kept")
    assert temporary_files(tmp_path) == sorted([killed, live, elsewhere, old])
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([killed, old])
    assert temporary_files(tmp_path) == sorted([live, elsewhere])
