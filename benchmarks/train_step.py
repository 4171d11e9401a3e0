"""Training-step throughput and peak memory per model size on the current device.

Each size runs in its own process (so peak memory is that size's alone): a
few warm-up steps, then timed optimizer steps (forward, backward, AdamW) on
random z-scored clips with the real grid mask, tube masking at 0.9. On CUDA:
bf16 autocast and fused AdamW, peak from ``torch.cuda.max_memory_allocated``;
on CPU: float32, peak RSS of the process.

Usage: python benchmarks/train_step.py [--sizes micro tiny small base] [--pixel-size 2.4] [--tubelet 4]
                                       [--batch 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(size: str, pixel_size: float, tubelet: int, batch: int, steps: int) -> dict:
    import torch

    from flatprep.flatmap import make_grid
    from flatprep.learn.model import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    grid = make_grid(pixel_size=pixel_size)
    model = build_model(size, img_size=grid.shape, clip_frames=16, tubelet=tubelet).to(device)
    optimizer = model.configure_optimizer(0.05, 1e-4, (0.9, 0.95))
    mask = torch.from_numpy(grid.mask).to(device)
    clips = torch.randn(batch, 1, 16, *grid.shape, device=device).masked_fill(~mask, 0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss, _, _ = model(clips, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"size": size, "device": str(device), "grid": list(grid.shape), "params": model.num_parameters(),
            "clips_per_s": batch * steps / seconds, "peak_gb": peak / 1024**3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["micro", "tiny", "small"])
    parser.add_argument("--pixel-size", type=float, default=None, help="default: 1.2 on CUDA, 2.4 on CPU")
    parser.add_argument("--tubelet", type=int, default=None, help="default: 2 on CUDA, 4 on CPU")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    pixel = args.pixel_size or (1.2 if cuda else 2.4)
    tubelet = args.tubelet or (2 if cuda else 4)
    if args.one:
        print(json.dumps(one(args.one, pixel, tubelet, args.batch, args.steps)))
        return
    print(f"{'cuda: ' + torch.cuda.get_device_name() if cuda else 'cpu'}; grid {pixel} mm, tubelet {tubelet}, "
          f"batch {args.batch}, 16-frame clips, mask ratio 0.9, {args.steps} timed steps")
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", size, "--pixel-size", str(pixel), "--tubelet",
                              str(tubelet), "--batch", str(args.batch), "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['size']:>6}: {r['params'] / 1e6:7.2f} M params, grid {r['grid'][0]}x{r['grid'][1]}: "
              f"{r['clips_per_s']:8.1f} clips/s, peak {r['peak_gb']:.2f} GB")


if __name__ == "__main__":
    main()
