"""Lazy package faces: public names resolve to their module on first use.

``from flatprep import make_grid`` must not import torch, scipy or nibabel
for a user who only wants one thing, so package ``__init__`` files list where
each public name lives and import that module only when the name is asked for.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for a package whose names live in submodules.

    ``exports`` maps a public name to the submodule (relative to ``package``)
    that defines it.
    """

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
