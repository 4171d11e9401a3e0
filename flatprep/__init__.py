"""flatprep: surface-sampled fMRI to cortical flat-map datasets.

The library. Public names are importable from here (``from flatprep import
make_grid, read_run``); the torch side lives in :mod:`flatprep.learn` and the
sample-subject generator in :mod:`flatprep.sample`. Nothing heavy runs at
import: each name imports its module on first use.
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # grid, templates and operators
    "FlatGrid": "flatmap", "ProjectionOperator": "flatmap", "make_grid": "flatmap",
    "build_operator": "flatmap", "grid_from_description": "flatmap",
    "build_native_operator": "fsnative",
    "PixelIndex": "pixels",
    "FlatTemplate": "templates", "load_template": "templates",
    "template_from_gifti": "templates", "template_from_pycortex": "templates",
    # reading inputs and cleaning them
    "SurfaceBold": "io", "load_surface_bold": "io", "read_confounds": "io",
    "run_repetition_time": "io", "header_tr_seconds": "io", "TR_RANGE": "io",
    "read_movement_regressors": "hcp", "read_hcp_events": "hcp",
    "CleanOptions": "clean", "CleanResult": "clean", "clean_bold": "clean",
    "PreparedRun": "prepare", "prepare_run": "prepare",
    # MNI volumes
    "VolumeBold": "io", "open_volume_bold": "io",
    "VolumeOperator": "volume", "build_volume_operator": "volume", "prepare_volume_run": "volume",
    # the file formats
    "RunData": "h5", "read_run": "h5", "write_run": "h5", "write_run_blocks": "h5", "validate_run": "h5",
    "open_h5": "h5", "create_h5": "h5", "content_sha256": "h5",
    "temporary_files": "atomic", "remove_stale_temporaries": "atomic",
    "ShardOptions": "shards", "read_manifest": "shards",
    "validate_output": "validate",
    # jobs sharing a folder
    "file_lock": "locks",
    # figures
    "save_flatmap_png": "qc",
    "draw_flatmap": "mapfigure",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *_EXPORTS]
