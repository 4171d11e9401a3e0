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
    # Read, clean, project and write in one node: neither the cleaned vertex data nor the frames go through a file.
    assert "flatten" in names and not {"clean", "project", "ds_flat"} & names
    assert type(wf.get_node("flatten").interface).__name__ == "FlattenSurfaceBold"
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
    assert {"flatten", "figures"} <= names and not {"clean", "project", "ds_flat"} & names
    assert type(wf.get_node("flatten").interface).__name__ == "FlattenVolumeBold"
    assert ("coverage_file", "coverage_file") in [c for _, _, d in graph.edges(data=True)
                                                  for c in d["connect"]]
    assert "MNI152NLin2009cAsym" in wf.__desc__ and "ribbon" in wf.__desc__


