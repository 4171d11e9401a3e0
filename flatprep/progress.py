"""Progress of long loops: a tqdm bar on a terminal, else one log line per item.

Piped output (``make demo | tee``, cluster job logs) gets plain lines; a terminal
gets a bar. Failures are always logged, so they reach log files and tests either way.
"""

from __future__ import annotations

import logging
import sys


def progress_bar(total: int, *, initial: int = 0, desc: str = "", unit: str = "it"):
    """A tqdm bar on a terminal, else None (then progress goes to plain log lines)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=True)


class Progress:
    """Items of a loop reported as they finish: ``[n/total] message`` lines, or a bar on a terminal."""

    def __init__(self, total: int, *, desc: str, unit: str, logger: logging.Logger):
        self.total, self.done, self.logger = total, 0, logger
        self.bar = progress_bar(total, desc=desc, unit=unit)

    def item(self, message: str, *, level: int = logging.INFO) -> None:
        """One item finished. Its line is logged at ``level``; with a bar, INFO lines drop to DEBUG
        (the bar shows them) while warnings and errors still show."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            level = logging.DEBUG if level <= logging.INFO else level
        self.logger.log(level, "[%d/%d] %s", self.done, self.total, message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
