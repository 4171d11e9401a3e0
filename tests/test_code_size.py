"""The charter's size limits: no function over 80 lines of code, no class over 300 (docstrings,
comments and blank lines not counted), anywhere in flatprep/ and pipelines/."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {ast.FunctionDef: 80, ast.AsyncFunctionDef: 80, ast.ClassDef: 300}


def _docstring_lines(tree) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (*LIMITS, ast.Module)) and ast.get_docstring(node, clean=False) is not None:
            lines.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    return lines


def code_lines(source: str, node, docstrings: set[int]) -> int:
    """Lines of ``node`` that hold code."""
    text = source.splitlines()
    return sum(1 for n in range(node.lineno, node.end_lineno + 1)
               if n not in docstrings and text[n - 1].strip() and not text[n - 1].strip().startswith("#"))


def oversized(paths) -> list[str]:
    found = []
    for path in paths:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        docstrings = _docstring_lines(tree)
        for node in ast.walk(tree):
            limit = LIMITS.get(type(node))
            if limit and (n := code_lines(source, node, docstrings)) > limit:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines of code (limit {limit})")
    return found


def test_code_lines_skip_docstrings_comments_and_blank_lines():
    source = 'def f():\n    """Doc.\n\n    More."""\n    # note\n\n    a = 1\n    return a\n'
    tree = ast.parse(source)
    assert code_lines(source, tree.body[0], _docstring_lines(tree)) == 3


@pytest.mark.parametrize("package", ["flatprep", "pipelines"])
def test_no_function_or_class_over_the_limits(package):
    assert oversized(sorted((ROOT / package).rglob("*.py"))) == []
