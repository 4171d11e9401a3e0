"""One look for every command's ``--help`` (defaults shown once, examples at the end), and usage errors in one line."""

from __future__ import annotations

import argparse
import sys
import textwrap


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the epilog's line breaks; adds ``(default: X)`` only where the help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


def examples(doc: str) -> list[str]:
    """The command lines of a module docstring's ``Examples::`` block (its indented lines)."""
    lines = doc.split("Examples::", 1)[1].splitlines()[1:] if "Examples::" in doc else []
    found = []
    for line in lines:
        if line and not line.startswith(" "):
            break
        if line.strip():
            found.append(line.strip())
    return found


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, ``<prog>: error: <message>`` (exit status 2):
    the full usage of a command with 40 options would bury the message."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def make_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser with flatprep's help format and the shared ``--version``, ``-q`` and ``-v``
    (:func:`.common.add_common_arguments`): ``doc``'s first line describes the command and its ``Examples::``
    block ends the help (a command's module docstring holds both, so they cannot drift)."""
    from .common import add_common_arguments

    description = textwrap.fill(doc.strip().splitlines()[0].replace("``", ""), 88)
    epilog = "examples:\n" + "\n".join(f"  {command}" for command in examples(doc))
    parser = Parser(prog=prog, description=description, formatter_class=HelpFormatter, epilog=epilog)
    add_common_arguments(parser)
    return parser
