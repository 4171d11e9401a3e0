"""Conventions every flatprep command shares.

- ``--version``; ``-q`` (warnings and errors), default (progress and results),
  ``-v`` (flatprep's own details: the space and input file of each run, ...),
  ``-vv`` (third-party libraries' messages too) — see :func:`.logs.configure_logging`.
- A usage error is one line, ``<command>: error: <message>``, exit status 2
  (:class:`.help.Parser`).
- SIGINT (Ctrl-C) and SIGTERM (``scancel``, a SLURM time limit) stop the
  command: the running step is abandoned, nothing partial is left under a
  final name, and the command ends with one line and exit status 130 or 143.
  A second signal ends the process at once.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
from contextlib import contextmanager

from flatprep import __version__
from flatprep.exceptions import Interrupted

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_common_arguments(parser) -> None:
    """Add ``--version``, ``-q/--quiet`` and ``-v/--verbose`` (repeatable) to ``parser``."""
    parser.add_argument("--version", action="version", version=f"{parser.prog} {__version__}")
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    levels.add_argument("-v", "--verbose", action="count", default=0,
                        help="more detail: -v adds flatprep's own details (e.g. the space and input file of each "
                             "run), -vv adds the messages of the libraries flatprep uses")


def verbosity(args) -> int:
    """-1 for ``-q``, else the number of ``-v`` flags."""
    return -1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0)


def _raise_interrupted(signum, frame) -> None:
    for number in _SIGNALS:  # a second signal ends the process at once
        signal.signal(number, signal.SIG_DFL)
    raise Interrupted(signum)


@contextmanager
def stop_on_signals():
    """Turn SIGINT and SIGTERM into :class:`~flatprep.exceptions.Interrupted` in the main thread while the
    block runs; the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in _SIGNALS}
    for number in _SIGNALS:
        signal.signal(number, _raise_interrupted)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def say(level: int, message: str) -> None:
    """Log ``message`` on the flatprep logger, or print it to stderr when logging is not set up yet."""
    log = logging.getLogger("flatprep")
    if logging.getLogger().handlers:
        log.log(level, "%s", message)
    else:
        print(message, file=sys.stderr, flush=True)


def command(main):
    """Decorate a command's ``main(argv)``: signals stop it with one line and exit status 128 + signal."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            with stop_on_signals():
                return main(argv)
        except Interrupted as stop:
            say(logging.ERROR, f"{stop}: stopped; {getattr(stop, 'summary', '') or 'nothing partial was kept'}")
            return stop.exit_code

    return wrapper
