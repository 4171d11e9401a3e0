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


def make_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser with flatprep's help format: ``doc``'s first line describes the command and its
    ``Examples::`` block ends the help (a command's module docstring holds both, so they cannot drift)."""
    description = textwrap.fill(doc.strip().splitlines()[0].replace("``", ""), 88)
    epilog = "examples:\n" + "\n".join(f"  {command}" for command in examples(doc))
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter,
                                   epilog=epilog)
