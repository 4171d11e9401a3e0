"""A non-editable install works: flatprep.pipelines and the bids_specs data
install under the flatprep namespace, and nothing generic lands beside them."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_ships_pipelines_and_bids_specs(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin") == ["flatprep"]
    probe = (
        "import json, flatprep, flatprep.pipelines\n"
        "from flatprep.pipelines.specs import load_spec\n"
        "print(json.dumps({'lib': flatprep.__file__, 'pipelines': flatprep.pipelines.__file__,"
        " 'patterns': len(load_spec('flatprep.json')['default_path_patterns']),"
        " 'dataset': load_spec('dataset_description.json')['DatasetType']}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["lib"].startswith(str(target)) and found["pipelines"].startswith(str(target))
    assert found["patterns"] >= 1 and found["dataset"] == "derivative"
