"""How far pretraining must go: the MAE's validation loss over steps against zeros and the PCA baseline.

Trains the bundled MAE with the demo's settings on the shards of a flatprep output folder, scores the
validation split every ``--eval-every`` steps (the masked loss of the MAE, of predicting zeros and of the
trainer's PCA baseline, on the same clips and masks), and reports the first step at which the MAE beats
the PCA baseline; when it does not within ``--steps``, the log-log slope of the MAE loss over the second
half of the run and the step at which that trend would reach the PCA loss. Then the linear-probe table
(``flatprep-probe``'s targets and baselines) for the encoder at the last step and the same architecture
at random initialisation.

Usage: nice python experiments/learning_budget.py DEMO_OUT/flatprep DEMO_OUT/bids [--steps 1500]
       [--eval-every 250] [--threads N] [--folds 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mae_learning import load_clips  # same folder (run as a script)

from flatprep.learn.baselines import PCABaseline
from flatprep.learn.model import build_model
from flatprep.learn.train import TrainConfig, build_scheduler


def validation_losses(mae, pca, clips, valid, *, tubelet: int) -> tuple[float, float, float]:
    """Mean masked loss of the MAE, of zeros and of the PCA baseline on fixed masks."""
    generator = torch.Generator().manual_seed(5)
    totals = np.zeros(3)
    mae.eval()
    with torch.no_grad():
        for start in range(0, len(clips), 16):
            batch = clips[start:start + 16].masked_fill(~valid[None, None, None], 0.0)
            noise = torch.rand(len(batch), mae.noise_size, generator=generator)
            loss, pred, token_mask = mae(batch, valid, noise=noise)
            rebuilt = pca.predict(batch, token_mask, tubelet=tubelet, patch_size=mae.config.patch_size)
            totals += [float(loss), float(mae.forward_loss(batch, torch.zeros_like(pred), token_mask, valid)),
                       float(mae.forward_loss(batch, mae.patchify(rebuilt), token_mask, valid))]
    mae.train()
    return tuple(totals / -(-len(clips) // 16))


def crossing(steps: np.ndarray, mae: np.ndarray, pca: float) -> str:
    """Where the MAE beats PCA, or the log-log trend of its second half and where it would."""
    below = np.flatnonzero(mae < pca)
    if below.size:
        return f"the MAE beats the PCA baseline from step {int(steps[below[0]])}"
    half = steps >= steps[-1] / 2
    slope, intercept = np.polyfit(np.log(steps[half]), np.log(mae[half]), 1)
    if slope >= 0:
        return f"not within {int(steps[-1])} steps; the loss no longer falls (log-log slope {slope:+.3f})"
    needed = np.exp((np.log(pca) - intercept) / slope)
    return (f"not within {int(steps[-1])} steps; log-log slope {slope:+.3f} over the second half, "
            f"so about {needed:,.0f} steps at this rate")


def probe_table(mae, data: Path, bids: Path, clip_frames: int, *, folds: int) -> str:
    """flatprep-probe's table for this encoder and its random initialisation."""
    from flatprep.h5 import read_run, read_run_attrs
    from flatprep.flatmap import grid_from_description
    from flatprep.learn.embed import Encoder, read_embeddings, write_embeddings
    from flatprep.learn.probe import format_probe_table, random_init_encoder
    from flatprep.pipelines.cli.probe import probe_tables
    from flatprep.tables import read_participants

    paths = sorted(data.glob("sub-*/**/func/*_desc-flat_bold.h5"))
    grid = grid_from_description(read_run_attrs(paths[0])[1])
    trained = Encoder(mae.eval(), grid, clip_frames=clip_frames, normalize="frame", clip_value=3.0,
                      clean_options=None, source="learning_budget")
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, encoder in (("trained", trained), ("random-init", random_init_encoder(trained, seed=0))):
            runs, embeddings = [], []
            for path in paths:
                run = read_run(path)
                runs.append({"label": path.name, "entities": run.attrs["entities"], "source": str(path)})
                embeddings.append(encoder.embed_frames(run.frames))
            tables[label] = read_embeddings(write_embeddings(Path(tmp) / f"{label}.h5", runs, embeddings,
                                                             encoder=encoder))
    rows = probe_tables(tables["trained"], read_participants(bids / "participants.tsv"), bids, compare={"random-init": tables["random-init"]},
                        folds=folds)
    return format_probe_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="flatprep output folder with shards/ (e.g. demo_out/flatprep)")
    parser.add_argument("bids", type=Path, help="its BIDS folder (participants.tsv, events)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--folds", type=int, default=4, help="probe folds (4: two of the demo's subjects each)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    train_clips, mask = load_clips(str(args.data), "train")
    val_clips, _ = load_clips(str(args.data), "val")
    valid = torch.from_numpy(mask)
    torch.manual_seed(0)
    mae = build_model("micro", img_size=mask.shape, clip_frames=train_clips.shape[2], tubelet=16, mask_ratio=0.75)
    frames = train_clips[:, 0, ::4][:, :, valid].reshape(-1, int(valid.sum()))  # every 4th frame
    pca = PCABaseline.fit(frames, mask, n_components=8)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    scheduler = build_scheduler(optimizer, TrainConfig(lr=args.lr, steps=args.steps))
    generator = torch.Generator().manual_seed(1)
    print(f"{len(train_clips)} training, {len(val_clips)} validation clips; {args.steps} steps of {args.batch_size}")
    print(f"{'step':>6s} {'MAE':>8s} {'zeros':>8s} {'PCA':>8s} {'MAE/zeros':>9s} {'seconds':>8s}")
    start, history = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        index = torch.randint(len(train_clips), (args.batch_size,), generator=generator)
        loss = mae(train_clips[index], valid, generator=generator)[0]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % args.eval_every == 0 or step == args.steps:
            losses = validation_losses(mae, pca, val_clips, valid, tubelet=16)
            history.append((step, *losses))
            print(f"{step:6d} {losses[0]:8.4f} {losses[1]:8.4f} {losses[2]:8.4f} {losses[0] / losses[1]:9.3f} "
                  f"{time.perf_counter() - start:8.0f}", flush=True)
    steps, mae_loss, _, pca_loss = map(np.array, zip(*history))
    print(crossing(steps, mae_loss, float(pca_loss.mean())))
    print(probe_table(mae, args.data, args.bids, train_clips.shape[2], folds=args.folds))


if __name__ == "__main__":
    main()
