"""Tests of flatprep.prepare: load a surface run, find its TR and confounds, clean it, refuse an empty one."""

import numpy as np
import pytest

from flatprep.clean import CleanOptions
from flatprep.exceptions import CleaningError
from flatprep.prepare import prepare_run
from flatprep.spaces import HEMIS, load_cortex_mask

from builders import MOTION, smooth_bold, write_confounds, write_func_gifti, write_json

N_VERTICES = 10242  # fsaverage5, per hemisphere


def _gifti_pair(folder, data, tr=None):
    return [write_func_gifti(folder / f"hemi-{h}.func.gii", data[:, i * N_VERTICES:(i + 1) * N_VERTICES], tr=tr)
            for i, h in enumerate(HEMIS)]


@pytest.fixture
def medial_wall_constant(rng):
    """fsaverage5 BOLD, 40 frames, with the medial wall constant as fMRIPrep writes it: (40, 20484) float32."""
    cortex = np.concatenate([load_cortex_mask("fsaverage5", h) for h in HEMIS])
    data = smooth_bold(40, rng=rng)
    data[:, ~cortex] = 0.0
    return data, cortex


def test_a_surface_run_is_cleaned_with_its_cortex_and_the_medial_wall_is_not_counted(tmp_path, medial_wall_constant):
    data, cortex = medial_wall_constant
    prepared = prepare_run(_gifti_pair(tmp_path, data, tr=2.0), space="fsaverage5")
    np.testing.assert_array_equal(prepared.cortex, cortex)
    assert prepared.cleaned.data.shape == (79, 2 * N_VERTICES)  # 40 frames at TR 2 s -> TR 1 s
    assert prepared.cleaned.tr_in == 2.0 and prepared.bold.space.name == "fsaverage5"
    assert prepared.cleaned.n_zero_variance == int((~cortex).sum()) and prepared.n_zero_variance_cortex == 0
    assert prepared.confounds is None


def test_the_sidecar_tr_and_the_confounds_reach_the_cleaning(tmp_path, medial_wall_constant):
    data, _ = medial_wall_constant
    sidecar = write_json(tmp_path / "bold.json", {"RepetitionTime": 1.5})
    confounds = write_confounds(tmp_path / "confounds.tsv", 40)
    prepared = prepare_run(_gifti_pair(tmp_path, data, tr=2.0), sidecars=[sidecar], confounds_file=confounds,
                           options=CleanOptions(confounds_strategy="motion"))
    assert prepared.cleaned.tr_in == 1.5  # the sidecar wins over the GIFTI header
    assert set(MOTION) <= set(prepared.confounds) and all(len(c) == 40 for c in prepared.confounds.values())
    assert prepared.cleaned.options["confounds_strategy"] == "motion"
    without = prepare_run(_gifti_pair(tmp_path, data, tr=2.0), sidecars=[sidecar])
    assert not np.array_equal(prepared.cleaned.data, without.cleaned.data)  # the motion was regressed out
    assert prepare_run(_gifti_pair(tmp_path, data, tr=2.0), tr_in=0.8).cleaned.tr_in == 0.8  # given TR wins


def test_a_run_with_mostly_constant_cortex_is_refused_naming_the_file(tmp_path, medial_wall_constant):
    data, cortex = medial_wall_constant
    data[:, np.flatnonzero(cortex)[: int(0.6 * cortex.sum())]] = 5.0  # 60 % of the cortex flat
    files = _gifti_pair(tmp_path, data, tr=2.0)
    with pytest.raises(CleaningError, match=rf"^{files[0]}: [\d,]+ of {int(cortex.sum()):,} cortex vertices are "
                                            r"constant over time \(more than 50%\)"):
        prepare_run(files)
    assert prepare_run(files, max_constant_fraction=0.7).n_zero_variance_cortex == int(0.6 * cortex.sum())


def test_the_products_precision_reaches_the_cleaning(tmp_path, medial_wall_constant):
    """``product_dtype`` (what the flat-map levels set) is passed through to clean_bold."""
    from flatprep.clean import clean_bold
    from flatprep.prepare import FLAT_PRODUCT_DTYPE

    data, _ = medial_wall_constant
    files = _gifti_pair(tmp_path, data, tr=2.0)
    options = CleanOptions(dtype="float32")
    flat = prepare_run(files, options=options, product_dtype=FLAT_PRODUCT_DTYPE).cleaned.data
    np.testing.assert_array_equal(flat, clean_bold(data, 2.0, options=options, product_dtype="float32").data)
    assert not np.array_equal(flat, prepare_run(files, options=options).cleaned.data)  # float64 by default
