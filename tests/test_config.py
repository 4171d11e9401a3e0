"""Tests of flatprep.config: options dataclasses checked from their type hints."""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest

from flatprep.config import check_fields, parse_text, replace_fields, rule
from flatprep.exceptions import FlatprepError


class _Bad(FlatprepError, ValueError):
    pass


@dataclass(frozen=True)
class _Options:
    count: int = field(default=1, metadata=rule("an int >= 1", lambda v: v >= 1))
    rate: float = 0.5
    mode: Literal["a", "b"] | None = "a"
    size: tuple[int, int] = (2, 3)
    flag: bool = False
    name: str | None = None

    def __post_init__(self):
        check_fields(self, _Bad)


def test_check_fields_converts_to_the_hinted_types():
    options = _Options(count=np.int64(3), rate=2, size=[4, 5], flag=np.bool_(True), mode=None)
    assert options == _Options(count=3, rate=2.0, size=(4, 5), flag=True, mode=None)
    assert type(options.count) is int and type(options.rate) is float and type(options.flag) is bool


@pytest.mark.parametrize(("name", "value", "must"), [
    ("count", 0, "an int >= 1"),
    ("count", 2.0, "an int >= 1"),
    ("count", True, "an int >= 1"),
    ("rate", "fast", "a number"),
    ("mode", "c", "one of 'a', 'b', None"),
    ("size", (1, 2, 3), r"a tuple of 2 \(an int, an int\)"),
    ("flag", 1, "True or False"),
    ("name", 3, "None or a string"),
])
def test_check_fields_names_class_field_rule_and_value(name, value, must):
    with pytest.raises(_Bad, match=rf"_Options: {name} must be {must}; got {re.escape(repr(value))}"):
        _Options(**{name: value})


def test_replace_fields_refuses_unknown_keys_listing_known_ones():
    assert replace_fields(_Options(), {"count": 5}, _Bad).count == 5
    with pytest.raises(_Bad, match="unknown option.s. cont; known options: count, rate"):
        replace_fields(_Options(), {"cont": 5}, _Bad, what="option")


def test_parse_text_reads_command_line_spellings():
    assert parse_text("3", int) == 3 and parse_text("0.25", float) == 0.25
    assert parse_text("true", bool) is True and parse_text("None", int | None) is None
    assert parse_text("[1, 2]", tuple) == [1, 2] and parse_text("abc", str) == "abc"
    assert parse_text("12", str) == "12" and parse_text('{"tubelet": 4}', dict) == {"tubelet": 4}
    # A string that names nothing parses to itself, so check_fields reports it with the field.
    with pytest.raises(_Bad, match="_Options: rate must be a number; got 'x1'"):
        _Options(rate=parse_text("x1", float))


def test_text_none_is_the_one_spelling_of_no_value():
    from flatprep.clean import CleanOptions
    from flatprep.config import text_none

    assert [text_none(v) for v in ("none", " NULL ", "None")] == [None, None, None]
    assert [text_none(v) for v in ("linear", "nonexistent", 0, None)] == ["linear", "nonexistent", 0, None]
    assert CleanOptions(detrend="none").detrend is None and CleanOptions(detrend="highpass").detrend == "highpass"
    assert parse_text("null", str | None) is None and parse_text("none", str) == "none"
