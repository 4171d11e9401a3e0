"""Tests of the lazy package faces: every public name resolves, and importing a face imports no torch."""

import subprocess
import sys

import pytest

import flatprep
import flatprep.learn


@pytest.mark.parametrize("package", [flatprep, flatprep.learn], ids=["flatprep", "flatprep.learn"])
def test_every_public_name_resolves(package):
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert sorted(dir(package)) == sorted(n for n in package.__all__ if n != "__version__")
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        getattr(package, "no_such_name")


def test_importing_the_faces_imports_nothing_heavy():
    code = "import sys, flatprep, flatprep.learn; print(sorted(m for m in ('torch', 'scipy', 'nibabel', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
