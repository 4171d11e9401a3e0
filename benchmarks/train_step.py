"""Training-step speed against a reference measured in the same run, per model size and tube length.

Each configuration runs in its own process (so peak memory is its own): a
few warm-up steps, then timed optimizer steps (forward, backward, AdamW) on
random z-scored clips with the real grid mask, tube masking at 0.9,
alternating flatprep's step and the reference step so both see the same
machine load. On CUDA: bf16 autocast and fused AdamW, peak from
``torch.cuda.max_memory_allocated``; on CPU: float32, peak RSS of the process.

The reference is the ``cortex-mae`` package from PyPI (the fm-MAE encoder and
decoder), fetched with ``pip download --no-deps`` into a temporary folder at
run time; it is never a dependency of flatprep. It needs timm, einops,
jaxtyping and huggingface_hub; when it cannot be loaded the benchmark says so
in one line and times the previous flatprep step instead
(:func:`flatprep.learn.reference.reference_forward`: a Conv3d over every patch
and the loss on the full token grid, with the same weights).

``--fp32-too`` (CUDA) also times flatprep's step without autocast, for the bf16 vs fp32 table.

Usage: python benchmarks/train_step.py [--sizes tiny small] [--tubelets 4 16] [--pixel-size 1.2]
                                       [--batch 8] [--steps 6] [--fp32-too]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load_cortex_mae(folder: Path):
    """``cortex_mae.models_mae`` from a wheel downloaded into ``folder``, or (None, reason)."""
    import zipfile

    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "cortex-mae", "-d",
                        str(folder)], check=True, capture_output=True, text=True, timeout=120)
        wheel = next(folder.glob("cortex_mae-*.whl"))
        zipfile.ZipFile(wheel).extractall(folder / "pkg")
        sys.path.insert(0, str(folder / "pkg"))
        import cortex_mae.models_mae as models_mae
    except (subprocess.SubprocessError, StopIteration, ImportError, OSError) as err:
        reason = getattr(err, "stderr", None) or str(err)
        return None, reason.strip().splitlines()[-1] if reason.strip() else type(err).__name__
    return models_mae, ""


def one(size: str, pixel_size: float, tubelet: int, batch: int, steps: int, reference: str, fp32: bool) -> dict:
    import torch

    from flatprep.flatmap import make_grid
    from flatprep.learn.model import build_model
    from flatprep.learn.reference import reference_forward

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    grid = make_grid(pixel_size=pixel_size)
    torch.manual_seed(0)
    model = build_model(size, img_size=grid.shape, clip_frames=16, tubelet=tubelet).to(device)
    optimizer = model.configure_optimizer(0.05, 1e-4, (0.9, 0.95))
    mask = torch.from_numpy(grid.mask).to(device)
    clips = torch.randn(batch, 1, 16, *grid.shape, device=device).masked_fill(~mask, 0.0)
    noise = torch.rand(batch, model.noise_size, device=device)
    steps_by_name = {"flatprep": lambda: model(clips, mask, noise=noise, return_pred=False)[0]}
    if reference == "previous":
        steps_by_name["reference"] = lambda: reference_forward(model, clips, mask, noise=noise)
    if fp32 and device.type == "cuda":
        steps_by_name["flatprep fp32"] = lambda: model(clips, mask, noise=noise, return_pred=False)[0]

    def step(name):
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=device.type == "cuda" and name != "flatprep fp32"):
            loss = steps_by_name[name]()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = {name: [] for name in steps_by_name}
    for name in steps_by_name:
        step(name)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        for name in steps_by_name:  # interleaved: both see the same load
            start = time.perf_counter()
            step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    median = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    return {"size": size, "tubelet": tubelet, "grid": list(grid.shape), "params": model.num_parameters(),
            "ms": median, "clips_per_s": {k: batch / v * 1e3 for k, v in median.items()}, "peak_gb": peak / 1024**3}


def reference_one(size: str, pixel_size: float, tubelet: int, batch: int, steps: int, folder: str) -> dict:
    """The cortex-mae model at the same config (same widths, depths, tokens), timed alone."""
    import torch

    from flatprep.flatmap import make_grid
    from flatprep.learn.model import MODEL_SIZES

    models_mae, _ = load_cortex_mae(Path(folder))
    shape = MODEL_SIZES[size]
    grid = make_grid(pixel_size=pixel_size)
    model = models_mae.MaskedAutoencoderViT(
        img_size=grid.shape, num_frames=16, t_patch_size=tubelet, patch_size=16, in_chans=1,
        embed_dim=shape["embed_dim"], depth=shape["depth"], num_heads=shape["num_heads"],
        decoder_embed_dim=shape["decoder_embed_dim"], decoder_depth=shape["decoder_depth"],
        decoder_num_heads=shape["decoder_num_heads"], pos_embed="sep")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clips = torch.randn(batch, 1, 16, *grid.shape)
    img_mask = torch.from_numpy(grid.mask)[None].expand(batch, -1, -1)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = model(clips, img_mask=img_mask, mask_ratio=0.9)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"ms": sorted(times[1:])[steps // 2] * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--tubelets", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--pixel-size", type=float, default=1.2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--fp32-too", action="store_true", help="CUDA: also time flatprep without bf16 autocast")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.one:
        size, tubelet, reference = args.one
        if reference.startswith("/"):
            out = reference_one(size, args.pixel_size, int(tubelet), args.batch, args.steps, reference)
        else:
            out = one(size, args.pixel_size, int(tubelet), args.batch, args.steps, reference, args.fp32_too)
        print(json.dumps(out))
        return
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="flatprep-cortex-mae-") as tmp:
        models_mae, reason = load_cortex_mae(Path(tmp))
        reference = tmp if models_mae is not None else "previous"
        print(f"{'cuda: ' + torch.cuda.get_device_name() if cuda else 'cpu'}; grid {args.pixel_size} mm, "
              f"batch {args.batch}, 16-frame clips, tube masking 0.9, median of {args.steps} steps; reference: "
              + ("cortex-mae (PyPI)" if models_mae is not None else
                 f"cortex-mae could not be loaded ({reason}); timing the previous flatprep step instead"))
        print("| size | tubelet | params (M) | flatprep ms/step | reference ms/step | speed-up | peak GB |")
        print("|---|---|---|---|---|---|---|")
        for size in args.sizes:
            for tubelet in args.tubelets:
                command = [sys.executable, __file__, "--pixel-size", str(args.pixel_size), "--batch",
                           str(args.batch), "--steps", str(args.steps), *(["--fp32-too"] if args.fp32_too else [])]
                run = lambda ref: json.loads(subprocess.run(  # noqa: E731
                    [*command, "--one", size, str(tubelet), ref], capture_output=True, text=True,
                    check=True).stdout.strip().splitlines()[-1])
                r = run("previous" if reference == "previous" else "none")
                if reference != "previous":
                    try:
                        ref_ms = run(reference)["ms"]
                    except subprocess.CalledProcessError as err:
                        print(f"cortex-mae failed to run ({err.stderr.strip().splitlines()[-1]}); timing the "
                              "previous flatprep step instead")
                        reference = "previous"
                        r = run(reference)
                ref_ms = r["ms"]["reference"] if reference == "previous" else ref_ms
                ms = r["ms"]["flatprep"]
                print(f"| {size} | {tubelet} | {r['params'] / 1e6:.2f} | {ms:.0f} | {ref_ms:.0f} | "
                      f"{ref_ms / ms:.2f}x | {r['peak_gb']:.2f} |")
                if "flatprep fp32" in r["ms"]:
                    print(f"| {size} fp32 | {tubelet} | | {r['ms']['flatprep fp32']:.0f} | | | |")


if __name__ == "__main__":
    main()
