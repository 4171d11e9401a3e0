"""One look for every command's ``--help``: defaults shown once, examples at the end."""

from __future__ import annotations

import argparse
import textwrap


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the epilog's line breaks; adds ``(default: X)`` only where the help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


def examples(*commands: str) -> str:
    """An ``--help`` epilog listing example command lines."""
    return "examples:\n" + "\n".join(f"  {command}" for command in commands)


def make_parser(prog: str, description: str, *commands: str) -> argparse.ArgumentParser:
    """An ArgumentParser with flatprep's help format and ``commands`` as examples.

    ``description`` may hold reST literals (a module docstring's first line); paragraphs are wrapped.
    """
    text = "\n\n".join(textwrap.fill(p, 88) for p in description.replace("``", "").split("\n\n"))
    return argparse.ArgumentParser(prog=prog, description=text, formatter_class=HelpFormatter,
                                   epilog=examples(*commands))
