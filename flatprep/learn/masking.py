"""Input checks, patch validity and MAE masking for :class:`~flatprep.learn.model.MaskedAutoencoder`.

Plain functions, so the model class reads like MAE's ``models_mae.py``
(patchify, encoder, decoder, loss) and these rules can be tested alone.
Shapes follow the model's docstring: ``N`` spatial patches, ``Tp`` time steps,
``L = Tp * N`` tokens numbered time-major (token ``t * N + n``).

Mask convention (MAE's): ``mask`` is ``(B, L)`` float, 0 = keep (visible to the
encoder), 1 = remove. A patch is valid when it holds at least one valid
pixel; empty patches are always removed and never predicted.
"""

from __future__ import annotations

import numbers

import torch

from ..exceptions import ModelError

__all__ = ["check_clips", "check_inputs", "check_mask_ratio", "check_valid_mask", "count_valid",
           "expand_patch_valid", "num_visible", "patch_pixels", "patch_valid", "removed_ids", "sample_mask",
           "token_pixels", "token_valid", "tube_ids", "valid_token_ids"]

MASKING_MODES = ("tube", "random")


# --------------------------------------------------------------------------- input checks


def check_clips(x, config) -> None:
    """Clips must be a tensor ``(B, C, T, H, W)`` matching ``config`` (an MAEConfig)."""
    expected = (config.in_chans, config.clip_frames, *config.img_size)
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or tuple(x.shape[1:]) != expected:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelError(f"clips must have shape (B, C, T, H, W) = (B, {', '.join(map(str, expected))}) "
                         f"from the model config; got {shape}")


def check_valid_mask(valid_mask, img_size: tuple, device=None) -> torch.Tensor:
    """``(H, W)`` or ``(B, H, W)`` bool (tensor or ndarray) -> ``(Bv, H, W)`` bool tensor on ``device``."""
    valid_mask = torch.as_tensor(valid_mask, device=device)
    if valid_mask.dtype != torch.bool:
        raise ModelError(f"valid_mask must be boolean; got dtype {valid_mask.dtype}")
    if valid_mask.ndim not in (2, 3) or tuple(valid_mask.shape[-2:]) != tuple(img_size):
        raise ModelError(f"valid_mask must have shape (H, W) or (B, H, W) with (H, W) = {tuple(img_size)}; "
                         f"got {tuple(valid_mask.shape)}")
    return valid_mask.reshape(-1, *img_size)  # (Bv, H, W)


def check_inputs(x, valid_mask, config) -> torch.Tensor:
    """Check clips and their mask together; returns the mask as ``(Bv, H, W)`` on the clips' device."""
    check_clips(x, config)
    valid_mask = check_valid_mask(valid_mask, config.img_size, device=x.device)  # (Bv, H, W)
    if valid_mask.shape[0] not in (1, x.shape[0]):
        raise ModelError(f"valid_mask holds {valid_mask.shape[0]} masks for a batch of {x.shape[0]} clips")
    return valid_mask


def check_mask_ratio(ratio: float, name: str) -> float:
    if not isinstance(ratio, numbers.Real) or not 0.0 <= ratio < 1.0:
        raise ModelError(f"{name} must be a number in [0, 1); got {ratio!r}")
    return float(ratio)


def expand_patch_valid(patch_valid: torch.Tensor, batch_size: int, num_patches: int) -> torch.Tensor:
    """``(N,)``, ``(1, N)`` or ``(B, N)`` bool -> ``(B, N)``."""
    patch_valid = patch_valid.reshape(-1, patch_valid.shape[-1])  # (Bv, N)
    if patch_valid.dtype != torch.bool or patch_valid.shape[1] != num_patches or \
            patch_valid.shape[0] not in (1, batch_size):
        raise ModelError(f"patch_valid must be bool of shape (N,), (1, N) or (B, N) with N = {num_patches}, "
                         f"B = {batch_size}; got {patch_valid.dtype} {tuple(patch_valid.shape)}")
    return patch_valid.expand(batch_size, -1)  # (B, N)


def count_valid(patch_valid: torch.Tensor) -> int:
    """The number of valid patches per sample, the same in every row of ``(B, N)``."""
    counts = patch_valid.sum(dim=1)  # (B,)
    n_min, n_max = int(counts.min()), int(counts.max())
    if n_max == 0:
        raise ModelError("valid_mask has no valid pixel: nothing to encode")
    if n_min != n_max:
        raise ModelError(f"the samples' valid masks hold between {n_min} and {n_max} valid patches; "
                         "all samples of a batch must come from one grid (same count)")
    return n_min


# --------------------------------------------------------------------------- validity


def patch_valid(valid_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Which spatial patches hold a valid pixel: ``(Bv, H, W)`` bool -> ``(Bv, N)``, patch ``i * Wp + j``."""
    Bv, H, W = valid_mask.shape
    p = patch_size
    blocks = valid_mask.reshape(Bv, H // p, p, W // p, p)  # (Bv, Hp, p, Wp, p)
    return blocks.any(dim=4).any(dim=2).reshape(Bv, -1)  # (Bv, N)


def patch_pixels(valid_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The valid pixels of each spatial patch: ``(Bv, H, W)`` bool -> ``(Bv, N, p, p)``, patch ``i * Wp + j``."""
    Bv, H, W = valid_mask.shape
    p = patch_size
    blocks = valid_mask.reshape(Bv, H // p, p, W // p, p).transpose(2, 3)  # (Bv, Hp, Wp, p, p)
    return blocks.reshape(Bv, -1, p, p)  # (Bv, N, p, p)


def token_pixels(pixel_valid: torch.Tensor, ids: torch.Tensor, num_patches: int) -> torch.Tensor:
    """The valid pixels of the tokens ``ids`` ``(B, n)``: ``(Bv, N, p, p)`` from :func:`patch_pixels` ->
    ``(B, n, p, p)`` (one shared mask, ``Bv`` = 1, or one per clip)."""
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None] if pixel_valid.shape[0] > 1 else 0  # (B, 1)
    return pixel_valid[rows, ids % num_patches]  # (B, n, p, p)


def token_valid(patch_valid: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Spatial validity repeated over ``n_steps`` time steps: ``(Bv, N)`` -> ``(Bv, L)``, time-major."""
    return patch_valid.repeat(1, n_steps)


def tube_ids(patch_ids: torch.Tensor, n_steps: int, num_patches: int) -> torch.Tensor:
    """Spatial patch ids ``(B, n)`` -> their tokens at every time step ``(B, Tp * n)``, time-major
    (ascending when ``patch_ids`` is)."""
    steps = torch.arange(n_steps, device=patch_ids.device) * num_patches  # (Tp,)
    return (steps[None, :, None] + patch_ids[:, None, :]).flatten(1)  # (B, Tp * n)


def valid_token_ids(patch_valid: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Ids of all valid tokens, ascending: ``(B, N)`` bool -> ``(B, Tp * n_valid)``."""
    B, N = patch_valid.shape
    n_valid = count_valid(patch_valid)
    ids = torch.arange(N, device=patch_valid.device).expand(B, N)  # (B, N)
    return tube_ids(ids[patch_valid].view(B, n_valid), n_steps, N)  # (B, Tp * n_valid)


def removed_ids(ids_keep: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
    """Ids of the valid tokens not in ``ids_keep`` (the predicted ones), ascending: ``(B, L_keep)``,
    ``(B, L)`` bool -> ``(B, L_valid - L_keep)``. ``ids_keep`` must hold valid tokens only."""
    removed = token_valid.clone()  # (B, L)
    removed.scatter_(1, ids_keep, False)
    return removed.nonzero()[:, 1].view(len(removed), -1)  # (B, L_pred)


# --------------------------------------------------------------------------- masking


def num_visible(n_valid: int, mask_ratio: float) -> int:
    """Number of visible items: ``round((1 - mask_ratio) * n_valid)``, at least 1.

    Python's ``round`` (half to even) is used, as in the tests.
    """
    return max(1, round((1.0 - mask_ratio) * n_valid))


def _noise(noise, shape, generator, device) -> torch.Tensor:
    if noise is None:
        return torch.rand(*shape, generator=generator, device=device)
    if tuple(noise.shape) != tuple(shape):
        raise ModelError(f"noise must have shape {tuple(shape)} (batch, noise_size), got {tuple(noise.shape)}")
    return noise.to(device)


def sample_mask(patch_valid: torch.Tensor, *, n_steps: int, masking: str, mask_ratio: float,
                generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the visible tokens of each sample.

    Parameters
    ----------
    patch_valid : bool Tensor, shape (B, N)
        Valid spatial patches; every row must count the same number.
    n_steps : int
        Time steps ``Tp``.
    masking : {"tube", "random"}
        ``"tube"`` keeps ``num_visible(n_valid_patches)`` spatial patches at
        every time step; ``"random"`` keeps ``num_visible(n_valid_tokens)``
        valid space-time tokens drawn independently.
    mask_ratio : float in [0, 1)
    generator : torch.Generator, optional
        Source of the random draw, on the device of ``patch_valid``.
    noise : Tensor, shape (B, N) (tube) or (B, L) (random), optional
        Uniform noise to rank instead of a fresh draw (the lowest values are kept).

    Returns
    -------
    ids_keep : int64 Tensor, shape (B, L_keep)
        Visible token indices, ascending; all valid.
    mask : float Tensor, shape (B, L)
        0 = keep, 1 = remove (empty patches are always removed).
    """
    B, N = patch_valid.shape
    n_valid = count_valid(patch_valid)
    device = patch_valid.device
    if masking == "tube":
        n_keep = num_visible(n_valid, mask_ratio)
        ranks = _noise(noise, (B, N), generator, device).masked_fill(~patch_valid, 2.0)  # empty patches last
        keep = ranks.argsort(dim=1)[:, :n_keep].sort(dim=1).values  # (B, n_keep)
        ids_keep = tube_ids(keep, n_steps, N)  # (B, Tp * n_keep)
    else:
        n_keep = num_visible(n_steps * n_valid, mask_ratio)
        ranks = _noise(noise, (B, n_steps * N), generator, device)
        ranks = ranks.masked_fill(~token_valid(patch_valid, n_steps), 2.0)  # empty tokens sort last
        ids_keep = ranks.argsort(dim=1)[:, :n_keep].sort(dim=1).values  # (B, n_keep)
    mask = torch.ones(B, n_steps * N, device=device)  # (B, L)
    mask.scatter_(1, ids_keep, 0.0)  # 0 keep, 1 remove
    return ids_keep, mask
