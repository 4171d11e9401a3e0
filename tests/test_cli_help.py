"""Every command line's --help: examples at the end, each default said once."""

import importlib

import pytest

COMMANDS = ["run", "sample", "validate", "train", "embed", "probe"]


def _build_parser(name):
    module = importlib.import_module(f"flatprep.pipelines.cli.{name}")
    build = getattr(module, "_build_parser", None)
    if build is None:  # `flatprep` keeps its parser in cli/parser.py
        build = importlib.import_module("flatprep.pipelines.cli.parser")._build_parser
    return build()


@pytest.mark.parametrize("name", COMMANDS)
def test_help_ends_with_examples_and_says_each_default_once(name):
    text = _build_parser(name).format_help()
    examples = text.split("examples:\n", 1)
    assert len(examples) == 2, f"{name}: no examples in --help"
    lines = [line for line in examples[1].splitlines() if line.strip()]
    assert 2 <= len(lines) <= 4 and all(line.strip().startswith(("flatprep", "torchrun")) for line in lines)
    assert "(default: None)" not in text
    for option_help in text.split("\n  -"):
        said, added, _ = option_help.partition("(default:")
        assert not (added and "default" in said), f"{name}: default said twice in {option_help!r}"
