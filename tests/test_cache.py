"""Tests of flatprep.cache: content digests and the on-disk array cache."""

import hashlib

import numpy as np

from flatprep import cache


def test_file_digest_is_the_sha256_and_follows_changes(tmp_path):
    path = tmp_path / "sphere.gii"
    path.write_bytes(b"first")
    assert cache.file_digest(path) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"second, longer")  # the memo is keyed on size and mtime too
    assert cache.file_digest(path) == hashlib.sha256(b"second, longer").hexdigest()


def test_array_digest_sees_dtype_and_shape_not_only_bytes():
    a = np.arange(6, dtype=np.int32)
    assert cache.array_digest(a) != cache.array_digest(a.reshape(2, 3))
    assert cache.array_digest(a) != cache.array_digest(a.view(np.float32))
    assert cache.array_digest(a[::2]) == cache.array_digest(np.ascontiguousarray(a[::2]))


def test_make_key_is_order_independent_and_part_sensitive():
    assert cache.make_key(a=1, b=[2, 3]) == cache.make_key(b=[2, 3], a=1)
    assert cache.make_key(a=1, b=[2, 3]) != cache.make_key(a=1, b=[3, 2])


def test_cached_arrays_builds_once_then_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATPREP_CACHE_DIR", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return {"weights": np.linspace(0, 1, 5)}

    first = cache.cached_arrays("operator", "k" * 64, build)
    second = cache.cached_arrays("operator", "k" * 64, build)
    assert len(calls) == 1 and np.array_equal(first["weights"], second["weights"])
    assert [p.name for p in (tmp_path / "operator").iterdir()] == ["k" * 32 + ".npz"]


def test_unwritable_cache_still_returns_the_arrays(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where the cache folder should be: no entry can be written
    monkeypatch.setenv("FLATPREP_CACHE_DIR", str(blocker))
    arrays = cache.cached_arrays("operator", "a" * 64, lambda: {"x": np.ones(3)})
    assert np.array_equal(arrays["x"], np.ones(3))
    assert "could not write cache entry" in caplog.text
