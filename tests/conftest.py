"""Shared fixtures. Tests run on CPU, offline, with every cache and config
folder redirected into a temporary directory for the session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Set before any flatprep, pycortex or matplotlib import: pycortex writes a user
# config on first import, and operators are cached on disk.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="flatprep-tests-"))
os.environ.setdefault("FLATPREP_CACHE_DIR", str(_SESSION_DIR / "cache"))
os.environ["XDG_CONFIG_HOME"] = str(_SESSION_DIR / "config")
os.environ.setdefault("MPLCONFIGDIR", str(_SESSION_DIR / "matplotlib"))
os.environ["NIPYPE_NO_ET"] = "1"


@pytest.fixture(scope="session")
def wb_command() -> str:
    """Connectome Workbench's ``wb_command``, an independent reference.

    Skipped (one line) where the Debian package connectome-workbench is not
    installed, unless FLATPREP_REQUIRE_WORKBENCH=1 (CI sets it) turns that into a failure.
    """
    return _required_program(("wb_command",), package="connectome-workbench", variable="FLATPREP_REQUIRE_WORKBENCH",
                             skipped="independent Workbench check not run")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless ``chromium``.

    Skipped (one line) where the Debian package chromium is not installed, unless FLATPREP_REQUIRE_BROWSER=1
    (CI sets it) turns that into a failure.
    """
    return _required_program(("chromium", "chromium-browser"), package="chromium", variable="FLATPREP_REQUIRE_BROWSER",
                             skipped="the HTML pages are not rendered in a browser")


def _required_program(names: tuple[str, ...], *, package: str, variable: str, skipped: str) -> str:
    """The path of the first of ``names`` on PATH; a one-line skip without it, a failure when ``variable`` is 1."""
    import shutil

    found = next(filter(None, map(shutil.which, names)), None)
    if found is None:
        reason = f"{names[0]} (Debian package {package}) is not installed"
        if os.environ.get(variable) == "1":
            pytest.fail(f"{variable}=1 but {reason}")
        pytest.skip(f"{reason}: {skipped}")
    return found


@pytest.fixture
def rng():
    """A seeded random generator."""
    return np.random.default_rng(20261125)


@pytest.fixture(scope="session")
def grid():
    """The default grid: fsaverage layout, 1.2 mm, 224 x 560."""
    from flatprep.flatmap import make_grid

    return make_grid()


@pytest.fixture(scope="session")
def coarse_grid():
    """The CPU-demo grid: 2.4 mm pixels, dimensions divisible by 16."""
    from flatprep.flatmap import make_grid

    return make_grid(pixel_size=2.4)


def smooth_sphere_function(points: np.ndarray) -> np.ndarray:
    """A smooth test function of position on the unit sphere: (n, 3) -> (n,)."""
    x, y, z = points.T
    return np.sin(3 * x) + np.cos(2 * y) * z + 0.5 * x * y


@pytest.fixture(scope="session")
def smooth_data():
    """smooth_sphere_function sampled on both hemispheres of a space: name -> (2V,)."""
    from flatprep.spaces import HEMIS, fsaverage_positions

    cache = {}

    def get(space: str) -> np.ndarray:
        if space not in cache:
            cache[space] = np.concatenate(
                [smooth_sphere_function(fsaverage_positions(space, h)) for h in HEMIS]
            )
        return cache[space]

    return get


@pytest.fixture(scope="session")
def sample_bids(tmp_path_factory):
    """A small sample dataset (2 subjects, rest + motor, fsaverage5 + fsLR, 60 s runs)."""
    from flatprep.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("sample") / "bids"
    write_sample_dataset(root, n_subjects=2, duration=60.0, seed=7)
    return root


@pytest.fixture(scope="session")
def participant_out(sample_bids, tmp_path_factory):
    """The participant level on the sample subjects (2.4 mm grid). Tests must not modify it."""
    from flatprep.pipelines.cli.run import main

    out = tmp_path_factory.mktemp("participant") / "flatprep"
    assert main([str(sample_bids), str(out), "participant", "--pixel-size", "2.4"]) == 0
    return out


@pytest.fixture(scope="session")
def grouped(participant_out, sample_bids, tmp_path_factory):
    """The group level on :func:`participant_out`: small shards, so the four runs spread over several files.
    Tests must not modify it (use ``copy_of``)."""
    import shutil

    from flatprep.pipelines.cli.run import main

    out = tmp_path_factory.mktemp("group") / "flatprep"
    shutil.copytree(participant_out, out)
    assert main([str(sample_bids), str(out), "group", "--shard-size", "0.004", "--split-ratios", "0.5", "0.5", "0"]) == 0
    return out


@pytest.fixture
def copy_of(grouped, tmp_path):
    """A copy of :func:`grouped` that a test may damage."""
    import shutil

    out = tmp_path / "flatprep"
    shutil.copytree(grouped, out)
    return out


@pytest.fixture(scope="session")
def shards(participant_out, sample_bids, tmp_path_factory):
    """The group level on :func:`participant_out` in one shard (train: one subject, val: the other).
    Tests must not modify it."""
    import shutil

    from flatprep.pipelines.cli.run import main

    out = tmp_path_factory.mktemp("train-data") / "flatprep"
    shutil.copytree(participant_out, out)
    assert main([str(sample_bids), str(out), "group", "--split-ratios", "0.5", "0.5", "0", "--no-figures"]) == 0
    return out
