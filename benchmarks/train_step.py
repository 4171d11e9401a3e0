"""Training-step speed against a reference measured in the same run, per model size and tube length.

Each configuration runs in its own process: two warm-up steps of flatprep
(its peak memory is read then, before the reference exists), then timed
optimizer steps (forward, backward, AdamW) on random z-scored clips with the
real grid mask, tube masking at 0.9, alternating flatprep's step and the
reference step so both see the same machine load; the speed-up is the median
of the ratios of these back-to-back pairs. On CUDA: bf16 autocast and fused
AdamW, peak from ``torch.cuda.max_memory_allocated``; on CPU: float32, peak
RSS.

The reference is the ``cortex-mae`` package from PyPI (the fm-MAE encoder and
decoder), fetched with ``pip download --no-deps`` into a temporary folder at
run time with the pure-Python packages its model modules import (timm, einops,
jaxtyping, wadler_lindig, huggingface_hub < 1, omegaconf); nothing is
installed and torch is the one already present. Only the modules the model
needs are imported (see :func:`import_cortex_mae`; torchvision never is). It
runs at flatprep's config (widths, depths, heads, tube, separable position
embeddings) and is given flatprep's tube mask, so both encode and predict the
same tokens. When it cannot be loaded the benchmark says so in one line and
times the previous flatprep step instead
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


#: Wheels fetched with ``pip download --no-deps`` for the reference: cortex-mae and the pure-Python
#: packages its model modules import. Nothing is installed; torch is the one already present.
#: huggingface_hub below 1.0 uses requests (already here); 1.x needs httpx.
REFERENCE_WHEELS = ("cortex-mae", "timm", "einops", "jaxtyping", "wadler_lindig", "huggingface_hub<1", "omegaconf")


def fetch_cortex_mae(folder: Path) -> str:
    """Download and unpack the reference wheels into ``folder / "site"``; "" or the reason it failed."""
    import zipfile

    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
                        "-d", str(folder / "wheels"), *REFERENCE_WHEELS],
                       check=True, capture_output=True, text=True, timeout=300)
        for wheel in (folder / "wheels").glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(folder / "site")
        import_cortex_mae(folder)
    except (subprocess.SubprocessError, ImportError, OSError, AttributeError) as err:
        reason = (getattr(err, "stderr", None) or f"{type(err).__name__}: {err}").strip()
        return reason.splitlines()[-1] if reason else type(err).__name__
    return ""


def import_cortex_mae(folder: Path):
    """``cortex_mae.models_mae`` from the unpacked wheels, importing only the modules the model needs.

    The ``cortex_mae`` and ``timm`` package ``__init__`` files are skipped (they pull in
    datasets, nibabel, torchvision and more), and ``timm.layers`` is assembled from its
    ``helpers`` and ``drop`` modules (``to_2tuple``, ``DropPath``), so torchvision is never imported.
    """
    import importlib
    import importlib.util
    import types

    if "cortex_mae.models_mae" in sys.modules:
        return sys.modules["cortex_mae.models_mae"]
    sys.path.insert(0, str(folder / "site"))

    def bare_package(name):  # the package's namespace without running its __init__
        module = types.ModuleType(name)
        module.__path__ = list(importlib.util.find_spec(name).submodule_search_locations)
        sys.modules[name] = module
        return module

    bare_package("cortex_mae")
    bare_package("timm")
    layers = bare_package("timm.layers")
    for part in ("helpers", "drop"):
        layers.__dict__.update(vars(importlib.import_module(f"timm.layers.{part}")))
    return importlib.import_module("cortex_mae.models_mae")


def build_reference(size: str, grid, tubelet: int):
    """The cortex-mae model at flatprep's config: same widths, depths, heads, patch and tube, separable
    position embeddings (as flatprep's), one class token."""
    from flatprep.learn.model import MODEL_SIZES

    shape = MODEL_SIZES[size]
    return REFERENCE["models_mae"].MaskedAutoencoderViT(
        img_size=grid.shape, num_frames=16, t_patch_size=tubelet, patch_size=16, in_chans=1,
        embed_dim=shape["embed_dim"], depth=shape["depth"], num_heads=shape["num_heads"],
        decoder_embed_dim=shape["decoder_embed_dim"], decoder_depth=shape["decoder_depth"],
        decoder_num_heads=shape["decoder_num_heads"], pos_embed="sep")


def tube_pixels(model, ids_keep, shape):
    """flatprep's kept tokens ``(B, L_keep)`` as a visible-pixel mask ``(B, 1, T, H, W)`` float, for cortex-mae:
    given this mask and no ratio it encodes the same tokens and predicts the same removed valid tokens."""
    import torch

    B = ids_keep.shape[0]
    Tp, Hp, Wp = model.grid_size
    c = model.config
    visible = torch.zeros(B, model.num_tokens).scatter_(1, ids_keep, 1.0).view(B, 1, Tp, 1, Hp, 1, Wp, 1)
    return visible.expand(-1, -1, -1, c.tubelet, -1, c.patch_size, -1, c.patch_size).reshape(shape)


#: The loaded reference module, set in a ``--one`` process when cortex-mae is used.
REFERENCE = {}


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
    steps_by_name = {"flatprep": (lambda: model(clips, mask, noise=noise, return_pred=False)[0], optimizer)}
    if fp32 and device.type == "cuda":
        steps_by_name["flatprep fp32"] = steps_by_name["flatprep"]

    def step(name):
        forward, optim = steps_by_name[name]
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=device.type == "cuda" and name != "flatprep fp32"):
            loss = forward()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    for _ in range(2):
        step("flatprep")
    # flatprep's own peak, before the reference exists in this process
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    ref_params = model.num_parameters()
    if reference == "previous":
        steps_by_name["reference"] = (lambda: reference_forward(model, clips, mask, noise=noise), optimizer)
    else:
        REFERENCE["models_mae"] = import_cortex_mae(Path(reference))
        torch.manual_seed(0)
        ref = build_reference(size, grid, tubelet).to(device)
        ref_params = sum(p.numel() for p in ref.parameters())
        img_mask = mask[None, None, None].float()  # (1, 1, 1, H, W)
        ids_keep, _ = model.sample_mask(model.patch_valid(mask).expand(batch, -1), noise=noise)
        visible = tube_pixels(model, ids_keep, clips.shape).to(device)
        ref_optimizer = torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        steps_by_name["reference"] = (lambda: ref(clips, img_mask=img_mask, visible_mask=visible, mask_ratio=None,
                                                  with_state=False), ref_optimizer)
    step("reference")
    times = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name in steps_by_name:  # interleaved: both see the same load
            start = time.perf_counter()
            step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    median = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    # speed-up: the median over steps of reference / flatprep, each pair timed back to back, so
    # that load from other processes, which drifts over seconds, cancels out
    ratios = sorted(r / f for f, r in zip(times["flatprep"], times["reference"]))
    return {"speed_up": ratios[len(ratios) // 2], "size": size, "tubelet": tubelet, "grid": list(grid.shape),
            "params": model.num_parameters(), "ref_params": ref_params, "ms": median,
            "clips_per_s": {k: batch / v * 1e3 for k, v in median.items()}, "peak_gb": peak / 1024**3}


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
        print(json.dumps(one(size, args.pixel_size, int(tubelet), args.batch, args.steps, reference, args.fp32_too)))
        return
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="flatprep-cortex-mae-") as tmp:
        reason = fetch_cortex_mae(Path(tmp))
        reference = "previous" if reason else tmp
        print(f"{'cuda: ' + torch.cuda.get_device_name() if cuda else 'cpu'}; grid {args.pixel_size} mm, "
              f"batch {args.batch}, 16-frame clips, tube masking 0.9, median of {args.steps} interleaved steps "
              "(speed-up: median of the back-to-back pairs' ratios)")
        print("reference: " + (f"cortex-mae {_wheel_version(Path(tmp))} from PyPI (pip download --no-deps into a "
                               "temporary folder, only its model modules imported; same tokens encoded and predicted)"
                               if not reason else f"the previous flatprep step (cortex-mae could not be loaded: "
                               f"{reason})"))
        print("| size | tubelet | params (M) flatprep / ref | flatprep ms/step | reference ms/step | speed-up "
              "| peak GB |")
        print("|---|---|---|---|---|---|---|")
        for size in args.sizes:
            for tubelet in args.tubelets:
                command = [sys.executable, __file__, "--pixel-size", str(args.pixel_size), "--batch",
                           str(args.batch), "--steps", str(args.steps), *(["--fp32-too"] if args.fp32_too else []),
                           "--one", size, str(tubelet)]
                done = subprocess.run([*command, reference], capture_output=True, text=True)
                if done.returncode and reference != "previous":
                    print(f"cortex-mae failed to run ({done.stderr.strip().splitlines()[-1]}); timing the "
                          "previous flatprep step instead")
                    reference = "previous"
                    done = subprocess.run([*command, reference], capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(done.stderr)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                ms, ref_ms = r["ms"]["flatprep"], r["ms"]["reference"]
                print(f"| {size} | {tubelet} | {r['params'] / 1e6:.3f} / {r['ref_params'] / 1e6:.3f} | {ms:.0f} | "
                      f"{ref_ms:.0f} | {r['speed_up']:.2f}x | {r['peak_gb']:.2f} |")
                if "flatprep fp32" in r["ms"]:
                    print(f"| {size} fp32 | {tubelet} | | {r['ms']['flatprep fp32']:.0f} | | | |")


def _wheel_version(folder: Path) -> str:
    return next((w.name.split("-")[1] for w in (folder / "wheels").glob("cortex_mae-*.whl")), "?")


if __name__ == "__main__":
    main()
