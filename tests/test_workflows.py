import re

import pytest

from flatprep.pipelines.workflows import init_flatten_wf


def _documented(section: str) -> set[str]:
    doc = init_flatten_wf.__doc__
    block = doc.split(f"    {section}\n    {'-' * len(section)}\n")[1].split("\n\n    ")[0]
    return set(re.findall(r"^    (\w+)$", block, flags=re.M))


@pytest.mark.parametrize("with_figures", [True, False])
def test_flatten_wf_builds_and_expands(with_figures, tmp_path):
    wf = init_flatten_wf(space="fsLR", output_dir=str(tmp_path), clean_options={}, with_figures=with_figures)
    wf.base_dir = str(tmp_path)
    graph = wf._create_flat_graph()  # expands every connection; raises on a bad one
    names = {node.name for node in graph.nodes()}
    # Read, clean and project in one node: the cleaned vertex data never goes through a file.
    assert {"clean", "ds_flat"} <= names and "project" not in names
    assert type(wf.get_node("clean").interface).__name__ == "FlattenSurfaceBold"
    assert ("figures" in names) is with_figures
    for node in wf._get_all_nodes():
        assert node.mem_gb > 0
    assert "fsLR" in wf.__desc__ and "1.2 mm" in wf.__desc__


def test_docstring_lists_exactly_the_node_fields():
    wf = init_flatten_wf(space="fsaverage5", output_dir=".", clean_options={})
    inputs = set(wf.get_node("inputnode").inputs.copyable_trait_names())
    outputs = set(wf.get_node("outputnode").inputs.copyable_trait_names())
    assert _documented("Inputs") == inputs
    assert _documented("Outputs") == outputs


def test_flatten_wf_for_volumes_reads_projects_and_cleans_in_one_node(tmp_path):
    wf = init_flatten_wf(space="MNI152NLin2009cAsym", output_dir=str(tmp_path), clean_options={})
    wf.base_dir = str(tmp_path)
    graph = wf._create_flat_graph()
    names = {node.name for node in graph.nodes()}
    assert {"clean", "ds_flat", "figures"} <= names and "project" not in names
    assert type(wf.get_node("clean").interface).__name__ == "FlattenVolumeBold"
    assert ("coverage_file", "coverage_file") in [c for _, _, d in graph.edges(data=True)
                                                  for c in d["connect"]]
    assert "MNI152NLin2009cAsym" in wf.__desc__ and "ribbon" in wf.__desc__


def test_frames_travel_to_the_sink_in_clip_blocks(tmp_path, monkeypatch, rng):
    """_load_blocks reads back, clip by clip, exactly the rows _save_blocks wrote (and refuses other layouts
    and a file cut short)."""
    from pathlib import Path

    import numpy as np

    from flatprep.exceptions import RunFileError
    from flatprep.pipelines.interfaces import _load_blocks, _save_blocks

    monkeypatch.chdir(tmp_path)
    frames = rng.normal(size=(37, 11)).astype(np.float16)  # 3 clips of 16 frames, the last one partial
    path = _save_blocks("frames.npy", frames.shape, (frames[i:i + 5] for i in range(0, 37, 5)))
    shape, blocks = _load_blocks(path, 16)
    blocks = list(blocks)
    assert shape == (37, 11) and [len(b) for b in blocks] == [16, 16, 5]
    np.testing.assert_array_equal(np.concatenate(blocks).view(np.uint16), frames.view(np.uint16))
    np.save("fortran.npy", np.asfortranarray(frames))
    with pytest.raises(RunFileError, match=r"fortran.npy: expected a 2-D C-ordered array, got shape \(37, 11\)"):
        _load_blocks(str(tmp_path / "fortran.npy"), 16)
    Path(path).write_bytes(Path(path).read_bytes()[:-30])  # cut inside the last frame (11 values of 2 bytes)
    with pytest.raises(RunFileError, match=r"frames.npy: ends inside frame 35 of 37 \(cut short\)"):
        list(_load_blocks(path, 16)[1])
