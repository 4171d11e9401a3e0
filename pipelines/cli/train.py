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
    from flatprep.exceptions import FlatprepError, Interrupted
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
    except Interrupted as stop:
        stop.summary = _stopped_summary(getattr(stop, "checkpoint", None), sys.argv[1:] if argv is None else argv)
        raise
    for line in training_ending(final, config, resumed=args.resume):
        logging.getLogger("flatprep").info("%s", line)
    return 0


def _stopped_summary(checkpoint, argv: list[str]) -> str:
    """What an interrupted training run left, and the command that continues it."""
    import shlex

    if checkpoint is None:
        return "stopped before a training step finished: this run wrote no checkpoint"
    again = shlex.join(["flatprep-train", *(a for a in argv if a != "--resume"), "--resume"])
    return f"checkpoint of the last finished step in {checkpoint}; continue with: {again}"


def training_ending(final: dict, config, *, resumed: bool) -> list[str]:
    """The closing lines of a training run: where it ended, and where the checkpoint and metrics are."""
    from flatprep.learn.checkpoint import resume_checkpoint

    out_dir = Path(config.out_dir)
    checkpoint = resume_checkpoint(out_dir)
    if not final:  # rank 0 trained no step: a finished run resumed
        return [f"nothing to do: {checkpoint} is at step {config.steps}, the configured end "
                "(raise it with --set steps=N to train further)" if resumed else "no training step ran"]
    scores = ", ".join(f"{key} {final[key]:.4f}" for key in ("loss", "val_loss", "val_zero_loss") if key in final)
    return [f"trained to step {final['step']} of {config.steps}: {scores}",
            f"checkpoint: {checkpoint}", f"metrics: {out_dir / 'metrics.jsonl'}; config: {out_dir / 'config.toml'}"]


if __name__ == "__main__":
    sys.exit(main())
