"""Every exception flatprep raises about user data lives in flatprep/exceptions.py."""

import ast
import inspect
from pathlib import Path

import flatprep
from flatprep import exceptions

ROOTS = [Path(flatprep.__file__).parent, Path(flatprep.__file__).parent.parent / "pipelines"]


def _exception_classes_defined_outside():
    found = []
    for root in ROOTS:
        for path in root.rglob("*.py"):
            if path.name == "exceptions.py" and path.parent == ROOTS[0]:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(
                        getattr(base, "id", getattr(base, "attr", "")).endswith(("Error", "Exception"))
                        for base in node.bases):
                    found.append(f"{path.name}:{node.name}")
    return found


def test_exception_classes_live_in_exceptions_py():
    assert _exception_classes_defined_outside() == []


def test_every_flatprep_exception_derives_from_flatprep_error():
    classes = [c for _, c in inspect.getmembers(exceptions, inspect.isclass) if c.__module__ == exceptions.__name__]
    assert len(classes) > 10
    # Interrupted is the one exception that is no error: a signal asked the command to stop.
    errors = [c for c in classes if c is not exceptions.Interrupted]
    assert all(issubclass(c, exceptions.FlatprepError) for c in errors)
    assert not issubclass(exceptions.Interrupted, Exception)  # `except Exception` in the runner lets it through
