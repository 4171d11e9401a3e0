"""One logging setup for every flatprep command line.

Only entry points configure logging (the library just logs); each calls
:func:`configure_logging` once, with the verbosity it was given
(:func:`.common.verbosity`: -1 for ``-q``, else the count of ``-v`` flags).

=========  ======================  ==========================================
verbosity  flatprep's own loggers  every other library (matplotlib, numexpr,
                                   nipype, distributed, pybids, ...)
=========  ======================  ==========================================
-1 (-q)    WARNING                 WARNING
0          ``default`` (INFO)      WARNING
1 (-v)     DEBUG                   WARNING
2 (-vv)    DEBUG                   DEBUG
=========  ======================  ==========================================
"""

from __future__ import annotations

import logging

# Libraries that set their own logger levels (so the root level alone does not quiet them).
_NOISY = ("nipype", "nipype.workflow", "nipype.interface", "nipype.utils", "distributed", "bids",
          "bidsschematools", "asyncio", "matplotlib", "numexpr", "h5py", "PIL", "fsspec")


def configure_logging(verbosity: int = 0, *, default: int = logging.INFO) -> None:
    """Log to stderr with times, at the levels of the table above."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if verbosity < 0:
        own = logging.WARNING
    elif verbosity == 0:
        own = default
    else:
        own = logging.DEBUG
    others = logging.DEBUG if verbosity > 1 else logging.WARNING
    logging.getLogger().setLevel(others)
    logging.getLogger("flatprep").setLevel(own)
    for name in _NOISY:
        logging.getLogger(name).setLevel(others)
