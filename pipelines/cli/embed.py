"""``flatprep-embed CHECKPOINT OUTPUT_DIR [INPUT ...]``: embeddings of scans from a pretrained encoder.

INPUT may be a flatprep output folder (its training shards, read by the training dataset, else its
``*_desc-flat_bold.h5`` runs), a (copied) ``shards/`` folder, single per-run ``.h5`` files, or a raw BIDS
folder with fMRIPrep surface derivatives (cleaned and projected exactly as the participant level does, with
the cleaning request stored with the shards). Without INPUT, the checkpoint's training data is embedded. Writes
``OUTPUT_DIR/embeddings.h5`` (per-clip and per-run class-token and mean-patch embeddings, with entities)
and ``OUTPUT_DIR/embeddings_runs.tsv``.

Examples::

    flatprep-embed run/ emb/                  # the training run's own shards
    flatprep-embed run/ emb/ out/             # every per-run flat map of a flatprep output
    flatprep-embed run/ emb/ bids/ --device cuda   # raw BIDS scans, cleaned as in training
    flatprep-embed run/ emb-random/ out/ --random-init 0   # the same architecture, fresh weights
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from functools import partial
from pathlib import Path

from .common import command, verbosity
from .logs import configure_logging
from .help import make_parser
from .validators import add_folder_argument


def _device(parser, value: str) -> str:
    """``cpu`` or ``cuda[:N]``, usable with this torch (else one usage error line)."""
    if value != "cpu" and not re.fullmatch(r"cuda(:\d+)?", value):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {value!r}")
    if value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            build = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            parser.error(f"--device {value}: {build} (torch {torch.__version__}); use --device cpu")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = make_parser("flatprep-embed", __doc__)
    add_folder_argument(parser, "checkpoint", "a run folder (latest checkpoint) or a checkpoint folder")
    parser.add_argument("output_dir", type=Path, help="where embeddings.h5 is written")
    parser.add_argument("inputs", nargs="*", type=Path, help="flatprep output folders, per-run .h5 files or BIDS folders")
    parser.add_argument("--device", default="cpu", type=partial(_device, parser), help="cpu, cuda or cuda:N")
    parser.add_argument("--random-init", type=int, default=None, metavar="SEED",
                        help="embed with the checkpoint's architecture at a random initialisation (seeded): "
                             "the control that shows what pretraining added")
    return parser


def _flat_runs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(path.glob("sub-*/**/func/*_desc-flat_bold.h5"))


@command
def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbosity(args))
    log = logging.getLogger("flatprep")
    from flatprep.learn.checkpoint import read_config
    from flatprep.learn.embed import Encoder, write_embeddings
    from flatprep.cache import file_digest
    from flatprep.exceptions import BIDSInputError, FlatprepError, Interrupted
    from flatprep.h5 import read_run
    from flatprep.progress import Progress
    from flatprep.shards import shard_folder

    try:
        encoder = Encoder.from_pretrained(args.checkpoint, device=args.device)
        trained_source = encoder.source
        if args.random_init is not None:
            from flatprep.learn.probe import random_init_encoder

            encoder = random_init_encoder(encoder, seed=args.random_init)
        inputs = args.inputs or [Path(read_config(Path(trained_source))["train"]["data"])]
        runs, embeddings = [], []
        for source in inputs:
            if source.is_dir() and (shard_folder(source) / "manifest.json").is_file():
                found = encoder.embed_shards(source)
                runs += found[0]
                embeddings += found[1]
                log.info("%s: %d runs, %d clips from the shards", source, len(found[0]),
                         sum(len(e.start) for e in found[1]))
                continue
            if source.is_dir() and (source / "dataset_description.json").exists() and not _flat_runs(source):
                from ..bids import discover_runs

                specs = discover_runs(source)
                progress = Progress(len(specs), desc="embed", unit="run", logger=log)
                for spec in specs:
                    if spec.error:  # a file name that is not valid BIDS
                        raise BIDSInputError(spec.error)
                    log.debug("%s: space %s, input %s", spec.label, spec.space, spec.bold[0])
                    frames = encoder.flatten_scan(spec.bold, space=spec.space, sidecars=spec.sidecars,
                                                  confounds_file=spec.confounds)
                    runs.append({"label": spec.label, "entities": spec.entities, "source": str(spec.bold[0])})
                    embeddings.append(encoder.embed_frames(frames))
                    progress.item(f"{spec.label}: {len(embeddings[-1].start)} clips")
                progress.close()
                continue
            paths = _flat_runs(source)
            if not paths:
                parser.error(f"{source}: no per-run flat maps (*_desc-flat_bold.h5) and not a BIDS folder")
            progress = Progress(len(paths), desc="embed", unit="run", logger=log)
            for path in paths:
                log.debug("embedding %s", path)
                run = read_run(path)
                encoder.check_grid(run.grid, path)
                runs.append({"label": path.name.replace("_desc-flat_bold.h5", ""), "entities": run.attrs["entities"],
                             "source": str(path), "source_sha256": file_digest(path)})
                embeddings.append(encoder.embed_frames(run.frames))
                progress.item(f"{runs[-1]['label']}: {len(embeddings[-1].start)} clips")
            progress.close()
    except FlatprepError as err:
        log.error("%s", err)
        return 2
    except Interrupted as stop:
        stop.summary = f"no embeddings written to {args.output_dir}"
        raise
    out = write_embeddings(args.output_dir / "embeddings.h5", runs, embeddings, encoder=encoder)
    from flatprep.tables import write_tsv

    rows = [{"run": run["label"], **{k: run["entities"].get(k) for k in ("subject", "session", "task")},
             "clips": len(emb.start), "source": run["source"]} for run, emb in zip(runs, embeddings)]
    table = write_tsv(args.output_dir / "embeddings_runs.tsv", rows,
                      ["run", "subject", "session", "task", "clips", "source"])
    log.info("%d runs, %d clips, dim %d; embeddings: %s; runs table: %s", len(runs),
             sum(len(e.start) for e in embeddings), encoder.dim, out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
