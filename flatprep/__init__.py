"""flatprep: surface-sampled fMRI to cortical flat-map datasets.

Nothing heavy runs at import: submodules are imported where they are used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
