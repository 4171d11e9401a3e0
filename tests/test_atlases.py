"""Tests of flatprep.atlases: network and parcel labels from installed packages, on every space."""

import numpy as np

from flatprep.atlases import load_fslr_labels, load_labels


def test_yeo_labels_reach_every_space_consistently():
    fslr = load_fslr_labels("yeo7")
    assert set(np.unique(fslr.labels)) == set(range(8))
    assert list(fslr.names[1:3]) == ["Visual", "Somatomotor"]
    # fsaverage vertex 0..10241 labels equal fsaverage5 labels (nested spheres).
    assert np.array_equal(load_labels("yeo7", "fsaverage").labels[:10242], load_labels("yeo7", "fsaverage5").labels[:10242])
