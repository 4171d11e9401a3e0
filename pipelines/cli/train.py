"""``flatprep-train``: masked-autoencoder pretraining on flatprep shards.

Examples::

    flatprep-train --data out/ --out-dir runs/micro --set steps=300 --set model_args.tubelet=4
    flatprep-train --config pretrain.toml --resume
    torchrun --nproc-per-node 4 -m flatprep.pipelines.cli.train --config pretrain.toml

Settings come from the defaults of :class:`flatprep.learn.train.TrainConfig`, then
the ``--config`` TOML file, then ``--data``/``--out-dir``, then each
``--set key=value`` (checked against the known keys and their types).
"""

from __future__ import annotations

import argparse
import textwrap
import logging
import sys
from pathlib import Path

from .help import make_parser
from .common import command, verbosity
from .logs import configure_logging


def _build_parser() -> argparse.ArgumentParser:
    parser = make_parser("flatprep-train", __doc__)
    parser.description += "\n\n" + textwrap.fill(
        "Settings come from the defaults of flatprep.learn.train.TrainConfig, then the --config TOML file, "
        "then --data/--out-dir, then each --set key=value (checked against the known keys and their types).", 88)
    parser.add_argument("--config", type=Path, help="TOML file of settings")
    parser.add_argument("--data", help="flatprep output folder with shards/ (setting 'data')")
    parser.add_argument("--out-dir", help="run folder (setting 'out_dir')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. steps=500 or model_args.tubelet=4 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    from flatprep.exceptions import FlatprepError
    from flatprep.learn.train import config_to_toml, resolve_config, run

    values = {k: v for k, v in (("data", args.data), ("out_dir", args.out_dir)) if v}
    try:
        config = resolve_config(args.config, args.overrides, **values)
    except FlatprepError as err:
        parser.error(str(err))
    if args.print_config:
        print(config_to_toml(config), end="")
        return 0
    if not config.data:
        parser.error("no data: pass --data OUTPUT_DIR (a flatprep output folder after the group level)")
    configure_logging(verbosity(args))
    try:
        final = run(config, resume=args.resume)
    except FlatprepError as err:
        logging.getLogger("flatprep").error("%s", err)
        return 2
    if final:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
