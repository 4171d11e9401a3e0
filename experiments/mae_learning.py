"""How fast the MAE learns on flat-map shards, against references trained on the same clips and masks.

Scores on the validation split, each as a ratio to the loss of predicting zeros on the same pixels:

1. the bundled MAE (``--model``, ``--tubelet``) after ``--steps`` AdamW steps;
2. a linear masked autoencoder with one weight matrix per patch position (encoder: visible tubes ->
   ``--rank`` amplitudes per time step, averaged over visible positions; decoder: amplitudes -> every
   tube), trained with the same optimiser, batches and masks; it needs no attention and no position
   embedding to use the fixed cortical layout;
3. the PCA baseline of the trainer (``flatprep.learn.baselines``), fitted in closed form.

A ratio near 1 means the model predicts about zeros; the linear and PCA rows show how much the data allow.
Run it on the output of ``make demo`` (``demo_out/flatprep``) or of the group level.

The defaults are the demo's pretraining settings.

Usage: python experiments/mae_learning.py DATA [--steps 1500] [--batch-size 8] [--lr 0.003]
       [--model micro] [--tubelet 16] [--mask-ratio 0.75] [--rank 16] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flatprep.learn.data import FlatClipsDataset, prepare_clips
from flatprep.learn.model import build_model
from flatprep.learn.baselines import PCABaseline
from flatprep.learn.train import TrainConfig, build_scheduler


def load_clips(root: str, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """Every clip of a split, normalised as the trainer does: (n, 1, T, H, W) and the (H, W) mask."""
    dataset = FlatClipsDataset(root, split=split)
    values = torch.stack([dataset[i]["values"] for i in range(len(dataset))])  # (n, T, P) float16
    clips = prepare_clips(values, dataset.pixels, normalize="frame", clip_value=3.0)
    mask = np.asarray(dataset.mask, dtype=bool)
    dataset.close()
    return clips, mask


class PerPositionLinearMAE(torch.nn.Module):
    """Masked linear autoencoder with its own (encoder, decoder) matrices at each patch position."""

    def __init__(self, mae, rank: int):
        super().__init__()
        self.mae = mae  # for patchify, masks and the loss only; its weights are not used
        n_patches, patch_dim = mae.num_patches, mae.patch_dim
        self.encoder = torch.nn.Parameter(torch.randn(n_patches, patch_dim, rank) * 0.01)
        self.decoder = torch.nn.Parameter(torch.randn(n_patches, rank, patch_dim) * 0.01)

    def forward(self, clips, valid, mask):
        """Masked loss for clips (B, 1, T, H, W) and a token mask (B, L) of the MAE (1 = hidden)."""
        mae = self.mae
        clips = clips.masked_fill(~valid[None, None, None], 0.0)
        batch = clips.shape[0]
        steps, n_patches = mae.grid_size[0], mae.num_patches
        tubes = mae.patchify(clips).view(batch, steps, n_patches, -1)  # (B, Tp, N, P)
        visible = (mask == 0).float().view(batch, steps, n_patches)  # (B, Tp, N)
        amplitudes = torch.einsum("btnp,npr,btn->btr", tubes, self.encoder, visible)
        amplitudes = amplitudes / visible.sum(dim=2, keepdim=True).clamp(min=1.0)  # (B, Tp, r)
        pred = torch.einsum("btr,nrp->btnp", amplitudes, self.decoder).reshape(batch, steps * n_patches, -1)
        return mae.forward_loss(clips, pred, mask, valid)


def train(step_fn, parameters, *, steps: int, lr: float) -> float:
    """AdamW and the trainer's warm-up + cosine schedule; returns seconds spent."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    scheduler = build_scheduler(optimizer, TrainConfig(lr=lr, steps=steps))
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss = step_fn(step)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="flatprep output folder with shards/ (e.g. demo_out/flatprep)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--model", default="micro")
    parser.add_argument("--tubelet", type=int, default=16)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--rank", type=int, default=16, help="amplitudes of the per-position linear model")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train_clips, mask = load_clips(args.data, "train")
    val_clips, _ = load_clips(args.data, "val")
    valid = torch.from_numpy(mask)
    print(f"{len(train_clips)} training and {len(val_clips)} validation clips of {tuple(train_clips.shape[2:])}; "
          f"{args.steps} steps of {args.batch_size} clips")

    def fresh_mae():
        torch.manual_seed(0)
        return build_model(args.model, img_size=mask.shape, clip_frames=train_clips.shape[2], tubelet=args.tubelet,
                           mask_ratio=args.mask_ratio)

    def batches(model_loss):
        generator = torch.Generator().manual_seed(1)

        def step_fn(_step):
            index = torch.randint(len(train_clips), (args.batch_size,), generator=generator)
            return model_loss(train_clips[index], generator)
        return step_fn

    mae = fresh_mae()
    mae_seconds = train(batches(lambda x, g: mae(x, valid, generator=g)[0]), list(mae.parameters()),
                        steps=args.steps, lr=args.lr)
    linear = PerPositionLinearMAE(fresh_mae(), args.rank)
    patch_valid = linear.mae.patch_valid(valid)

    def linear_loss(x, g):
        _, token_mask = linear.mae.sample_mask(patch_valid.expand(len(x), -1), generator=g)
        return linear(x, valid, token_mask)
    linear_seconds = train(batches(linear_loss), [linear.encoder, linear.decoder],
                           steps=args.steps, lr=args.lr)
    frames = train_clips[:, 0, ::4][:, :, valid].reshape(-1, int(valid.sum()))  # every 4th frame
    pca = PCABaseline.fit(frames, mask, n_components=8)

    scores = {"zeros": [], "MAE": [], "per-position linear": [], "PCA baseline (8 maps)": []}
    mae.eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for start in range(0, len(val_clips), 16):
            clips = val_clips[start:start + 16].masked_fill(~valid[None, None, None], 0.0)
            noise = torch.rand(len(clips), mae.noise_size, generator=generator)
            loss, pred, token_mask = mae(clips, valid, noise=noise)
            scores["MAE"].append(float(loss))
            scores["zeros"].append(float(mae.forward_loss(clips, torch.zeros_like(pred), token_mask, valid)))
            rebuilt = pca.predict(clips, token_mask, tubelet=args.tubelet, patch_size=mae.config.patch_size)
            scores["PCA baseline (8 maps)"].append(float(mae.forward_loss(clips, mae.patchify(rebuilt),
                                                                          token_mask, valid)))
            scores["per-position linear"].append(float(linear(clips, valid, token_mask)))
    zeros = float(np.mean(scores["zeros"]))
    seconds = {"MAE": mae_seconds, "per-position linear": linear_seconds}
    print(f"{'':24s} {'val loss':>9s} {'/ zeros':>8s} {'train s':>8s}")
    for name, values in scores.items():
        value = float(np.mean(values))
        spent = f"{seconds[name]:8.1f}" if name in seconds else f"{'-':>8s}"
        print(f"{name:24s} {value:9.4f} {value / zeros:8.3f} {spent}")


if __name__ == "__main__":
    main()
