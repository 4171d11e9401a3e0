"""One logging setup for every flatprep command line.

Only entry points configure logging (the library just logs); each calls
:func:`configure_logging` once, with the count of ``-v`` flags it was given.
"""

from __future__ import annotations

import logging

# Libraries that log every step at INFO; their warnings still show.
_NOISY = ("nipype", "distributed", "bids", "bidsschematools", "asyncio")


def configure_logging(verbosity: int = 0, *, default: int = logging.INFO) -> None:
    """Log to stderr with times: ``default`` level, INFO at ``-v``, DEBUG (libraries too) at ``-vv``."""
    level = logging.DEBUG if verbosity > 1 else min(default, logging.INFO) if verbosity else default
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
