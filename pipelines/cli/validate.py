"""``flatprep-validate OUTPUT_DIR``: check per-run files, shards and manifest.

Prints one line per problem and a last line with the verdict (``-q`` and a
valid folder: nothing), and exits 1 if there is any problem (0 when the
folder is consistent, 2 for usage errors).

Examples::

    flatprep-validate out/
    flatprep-validate /scratch/copied-output/ && echo ready for training
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import command
from .help import make_parser
from .validators import add_folder_argument


def _build_parser() -> argparse.ArgumentParser:
    parser = make_parser("flatprep-validate", __doc__)
    add_folder_argument(parser, "output_dir", "a flatprep output folder, after the group level")
    parser.add_argument("--json", action="store_true", help="print the problems as a JSON list")
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from flatprep.validate import validate_output

    problems = validate_output(args.output_dir)
    if args.json:
        print(json.dumps(problems, indent=2))
    else:
        for line in problems:
            print(line)
        if problems or not args.quiet:
            print(f"{args.output_dir}: {'valid' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
