"""Quality rules of the group level (flatprep.exclusion): parsing, FD from a confounds table, missing metrics."""

import numpy as np
import pytest

from flatprep.exceptions import ShardOptionsError
from flatprep.exclusion import ExcludeRule, motion_metrics, parse_rule
from flatprep.qc import framewise_displacement

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@pytest.mark.parametrize("text, rule", [("mean_fd>0.5", ExcludeRule("mean_fd", ">", 0.5)),
                                        (" tsnr <= 20 ", ExcludeRule("tsnr", "<=", 20.0)),
                                        ("censored_fraction>=1e-1", ExcludeRule("censored_fraction", ">=", 0.1))])
def test_parse_rule_reads_metric_operator_and_value(text, rule):
    assert parse_rule(text) == rule
    assert rule.matches(rule.value) == ("=" in rule.op)


@pytest.mark.parametrize("text, message", [
    ("fd>0.5", "unknown metric 'fd'; choose from mean_fd, max_fd, tsnr, censored_fraction"),
    ("mean_fd=0.5", "expected METRIC>VALUE"),
    ("tsnr<inf", "expected METRIC>VALUE"),
    ("tsnr<1.2.3", "'1.2.3' is not a number"),
])
def test_parse_rule_refuses_malformed_rules_naming_them(text, message):
    with pytest.raises(ShardOptionsError, match=f"--exclude '{text}': {message}"):
        parse_rule(text)


def test_framewise_displacement_from_motion_parameters_is_powers():
    params = np.zeros((4, 6))
    params[1, 0] = 0.3               # 0.3 mm translation
    params[2, 3] = 0.01              # 0.01 rad = 0.5 mm of arc at 50 mm
    fd = framewise_displacement(dict(zip(MOTION, params.T)))
    np.testing.assert_allclose(fd[1:], [0.3, 0.3 + 0.5, 0.5])
    assert np.isnan(fd[0])
    given = framewise_displacement({"framewise_displacement": np.array([np.nan, 2.0])})
    assert given[1] == 2.0 and framewise_displacement({"trans_x": np.zeros(3)}) is None


def test_motion_metrics_skip_dropped_volumes_and_refuse_a_changed_table(tmp_path):
    from flatprep.cache import file_digest

    table = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    table.write_text("framewise_displacement\nn/a\n9.0\n0.2\n0.8\n")
    sources = [{"path": str(table), "sha256": file_digest(table)}]
    metrics, why = motion_metrics(sources, n_dropped=2)  # the 9 mm jump is in a dropped volume
    assert why == "" and metrics == {"mean_fd": 0.5, "max_fd": 0.8, "censored_fraction": 0.5}
    table.write_text("framewise_displacement\nn/a\n0.1\n0.1\n0.1\n")
    assert motion_metrics(sources, n_dropped=2) == (
        {}, f"its confounds table {table} changed since the participant level (sha256 differs)")
    assert motion_metrics([], n_dropped=0) == ({}, "no confounds table was read for this run")
