"""The masked autoencoder (MAE) ViT over flat-map clips, in one file.

A clip is a tensor ``(B, C, T, H, W)``: ``C`` channels (1 for BOLD), ``T``
frames (16 at TR 1.0 s) of an ``H x W`` flat-map grid (224 x 560 at 1.2 mm).
Its valid-pixel mask ``valid_mask`` is a property of the grid: ``(H, W)`` bool,
the same for every sample, or ``(B, H, W)``.

The model, as read from top to bottom:

1. :class:`MAEConfig`: every hyperparameter, checked on construction.
2. :class:`PatchEmbed`, :class:`Attention`, :class:`MLP`, :class:`Block`: the
   ViT parts (pre-norm blocks with ``scaled_dot_product_attention``).
3. :class:`MaskedAutoencoder`: patchify, masking, encoder, decoder, loss,
   ``encode`` for embeddings, the optimizer.
4. :func:`sincos_table_1d`, :func:`sincos_table_2d`: the initial position
   embeddings (learned from there).
5. ``MODEL_SIZES`` and :func:`build_model`: the named sizes.

Tokens
------
A token is a tube of ``pt x p x p`` pixels (``tubelet x patch_size x
patch_size``). The token grid is ``(Tp, Hp, Wp) = (T / pt, H / p, W / p)``
with ``N = Hp * Wp`` spatial patches and ``L = Tp * N`` tokens, numbered
time-major: token ``l = t * N + i * Wp + j`` is time step ``t``, patch row
``i``, patch column ``j``. :meth:`MaskedAutoencoder.patchify`, the patch
embedding, the position embeddings and every mask use this order.

Masks (the MAE convention)
--------------------------
- A spatial patch is *valid* when it holds at least one valid pixel
  (``patch_valid``: ``(B, N)`` bool); a token is valid when its patch is
  (``token_valid``: ``(B, L)`` bool). All samples must have the same number of
  valid patches (true for one grid), so every tensor stays dense.
- ``mask``: ``(B, L)`` float, 0 = keep (visible to the encoder), 1 = remove.
  Empty patches are always removed.
- The *predicted* set is ``mask.bool() & token_valid``: removed and valid.
  The loss is the mean squared error over the valid pixels of those tokens
  only; empty patches are never visible and never predicted.
- ``masking="tube"`` hides the same spatial patches at every time step and
  keeps ``round((1 - mask_ratio) * n_valid_patches)`` of them (at least 1);
  ``masking="random"`` keeps ``round((1 - mask_ratio) * n_valid_tokens)``
  valid space-time tokens drawn independently.

Example
-------
>>> model = build_model("micro", img_size=(48, 96), tubelet=4)
>>> x = torch.randn(2, 1, 16, 48, 96)
>>> valid = torch.ones(48, 96, dtype=torch.bool)
>>> loss, pred, mask = model(x, valid)          # pred (2, 72, 1024), mask (2, 72)
>>> model.encode(x, valid)["cls"].shape
torch.Size([2, 64])
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check_fields, replace_fields, rule
from ..exceptions import ModelError
from . import masking
from .masking import num_visible

logger = logging.getLogger(__name__)

__all__ = [
    "MAEConfig",
    "MODEL_SIZES",
    "MLP",
    "Attention",
    "Block",
    "MaskedAutoencoder",
    "ModelError",
    "PatchEmbed",
    "build_model",
    "make_config",
    "num_visible",
    "sincos_table_1d",
    "sincos_table_2d",
]

#: Standard deviation of the truncated-normal init of embeddings and Linear weights.
INIT_STD = 0.02
#: Parameters whose name starts with one of these belong to the decoder.
_DECODER_PREFIXES = ("decoder_", "mask_token")




# --------------------------------------------------------------------------- config

_AT_LEAST_ONE = rule("an int >= 1", lambda v: v >= 1)
_FRACTION = rule("a number in [0, 1)", lambda v: 0.0 <= v < 1.0)


@dataclass(frozen=True)
class MAEConfig:
    """Every hyperparameter of :class:`MaskedAutoencoder`.

    Each field is checked on construction; a bad value raises
    :class:`ModelError` naming the field, the expected type or range and the
    value received. :meth:`to_dict` gives the JSON form stored in checkpoints
    and :meth:`from_dict` reads it back, rejecting unknown keys.
    """

    # Flat-map grid (height, width) in pixels, both multiples of patch_size.
    # (224, 560) is the reference 1.2 mm grid (a 14 x 35 patch grid); the 2.4 mm
    # CPU-demo grid is (112, 288).
    img_size: tuple[int, int] = field(default=(224, 560), metadata=rule(
        "a pair of positive ints (height, width)", lambda size: min(size) >= 1))
    # Frames per clip (TR 1.0 s); a multiple of tubelet.
    clip_frames: int = field(default=16, metadata=_AT_LEAST_ONE)
    # Side p of the square spatial patch, in pixels.
    patch_size: int = field(default=16, metadata=_AT_LEAST_ONE)
    # Frames pt per tube: 2 gives 8 time steps per 16-frame clip; 4 halves the
    # tokens again; 16 keeps one token per patch holding its whole time course
    # (the CPU demo: it learns fastest there).
    tubelet: int = field(default=2, metadata=_AT_LEAST_ONE)
    # Channels per pixel (1 for BOLD).
    in_chans: int = field(default=1, metadata=_AT_LEAST_ONE)
    # Encoder width, depth and attention heads (ViT-B: 768, 12, 12).
    embed_dim: int = field(default=768, metadata=_AT_LEAST_ONE)
    depth: int = field(default=12, metadata=_AT_LEAST_ONE)
    num_heads: int = field(default=12, metadata=_AT_LEAST_ONE)
    # Hidden width of every MLP, as a multiple of the block width.
    mlp_ratio: float = field(default=4.0, metadata=rule("a positive number", lambda v: 0 < v < math.inf))
    # Decoder width, depth and heads: light next to the encoder (MAE: 512 wide).
    decoder_embed_dim: int = field(default=512, metadata=_AT_LEAST_ONE)
    decoder_depth: int = field(default=4, metadata=_AT_LEAST_ONE)
    decoder_num_heads: int = field(default=16, metadata=_AT_LEAST_ONE)
    # Fraction of the valid patches (tube) or valid tokens (random) hidden from
    # the encoder; 0.9 as in the reference fm-MAE. In [0, 1).
    mask_ratio: float = field(default=0.9, metadata=_FRACTION)
    # "tube": the same spatial patches are hidden at every time step, so a hidden
    # patch cannot be copied from its neighbour in time; "random": valid
    # space-time tokens are hidden independently.
    masking: Literal["tube", "random"] = "tube"
    # Normalise each target patch by the mean/std of its valid pixels (MAE's
    # norm_pix_loss). Off by default: on z-scored BOLD the raw-pixel loss makes
    # visible progress on CPU within a minute, the normalised one does not.
    norm_pix_loss: bool = False
    # Stochastic depth of the last encoder block (rising linearly from 0 at the
    # first); the decoder has none. In [0, 1).
    drop_path: float = field(default=0.0, metadata=_FRACTION)

    def __post_init__(self):
        check_fields(self, ModelError)
        height, width = self.img_size
        for axis, size in (("height", height), ("width", width)):
            if size % self.patch_size:
                raise ModelError(
                    f"MAEConfig.img_size {self.img_size}: {axis} {size} is not a multiple of "
                    f"patch_size {self.patch_size} ({size} % {self.patch_size} = "
                    f"{size % self.patch_size}); use a grid whose dimensions are multiples of "
                    f"the patch size"
                )
        if self.clip_frames % self.tubelet:
            raise ModelError(
                f"MAEConfig.clip_frames {self.clip_frames} is not a multiple of tubelet "
                f"{self.tubelet}"
            )
        for width_name, heads_name in (("embed_dim", "num_heads"),
                                       ("decoder_embed_dim", "decoder_num_heads")):
            dim, heads = getattr(self, width_name), getattr(self, heads_name)
            if dim % heads:
                raise ModelError(
                    f"MAEConfig.{width_name} {dim} is not a multiple of {heads_name} {heads}"
                )

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """The token grid ``(Tp, Hp, Wp) = (clip_frames / tubelet, H / p, W / p)``."""
        height, width = self.img_size
        return self.clip_frames // self.tubelet, height // self.patch_size, width // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values (``img_size`` as a list)."""
        values = dataclasses.asdict(self)
        values["img_size"] = list(self.img_size)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MAEConfig":
        """A config from a mapping, e.g. read back from a checkpoint.

        Missing keys take their defaults; an unknown key raises :class:`ModelError`.
        """
        if not isinstance(values, Mapping):
            raise ModelError(f"MAEConfig.from_dict expects a mapping; got {type(values).__name__}")
        return replace_fields(cls(), values, ModelError, what="MAEConfig key")


# --------------------------------------------------------------------------- ViT parts


class PatchEmbed(nn.Module):
    """Project flattened tubes to ``embed_dim``: a Linear on :meth:`MaskedAutoencoder.patchify` values.

    The same map as a Conv3d with kernel = stride = ``(pt, p, p)``, but applied
    to the tokens it is given only (the visible ones, about 10 % of a clip),
    not to every patch. Input ``(B, n, pt * p * p * C)``, output ``(B, n, D)``.
    Checkpoints that hold the earlier Conv3d weight ``(D, C, pt, p, p)`` are
    converted on load.
    """

    def __init__(self, config: MAEConfig):
        super().__init__()
        patch_dim = config.tubelet * config.patch_size ** 2 * config.in_chans
        self.proj = nn.Linear(patch_dim, config.embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)  # (B, n, D)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "proj.weight"
        weight = state_dict.get(key)
        if weight is not None and weight.ndim == 5:  # Conv3d (D, C, pt, p, p) -> Linear (D, pt * p * p * C)
            state_dict[key] = weight.permute(0, 2, 3, 4, 1).reshape(weight.shape[0], -1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no causal mask, no dropout).

    ``n_out``, if given, computes the outputs of the last ``n_out`` tokens only
    (every token is still a key and a value): ``(B, N, C)`` -> ``(B, n_out, C)``.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, n_out: int | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads)  # (B, N, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, N, hs)
        if n_out is not None:
            q = q[:, :, N - n_out:]  # (B, nh, n_out, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, n_out or N, hs)
        y = y.transpose(1, 2).reshape(B, -1, C)  # (B, n_out or N, C)
        return self.proj(y)


class MLP(nn.Module):
    """Two Linear layers with a GELU between them: ``dim -> hidden -> dim``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for a fraction ``p`` of the samples."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)  # (B, 1, 1)
    return x * keep / (1.0 - p)


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, n_out: int | None = None) -> torch.Tensor:
        """``(B, N, D)`` -> ``(B, N, D)``, or the last ``n_out`` tokens only ``(B, n_out, D)``."""
        out = x if n_out is None else x[:, x.shape[1] - n_out:]  # the tokens whose outputs are computed
        out = out + drop_path(self.attn(self.norm1(x), n_out), self.drop_path, self.training)
        out = out + drop_path(self.mlp(self.norm2(out)), self.drop_path, self.training)
        return out


# --------------------------------------------------------------------------- the model


class MaskedAutoencoder(nn.Module):
    """Spatiotemporal masked autoencoder with a ViT encoder and a light ViT decoder.

    Parameters
    ----------
    config : MAEConfig
        Every hyperparameter; kept as ``self.config``.

    Attributes
    ----------
    grid_size : tuple of int
        The token grid ``(Tp, Hp, Wp)``.
    num_patches : int
        Spatial patches ``N = Hp * Wp``.
    num_tokens : int
        Tokens per clip ``L = Tp * N``.
    patch_dim : int
        Values per token ``pt * p * p * C``.

    Notes
    -----
    The encoder sees only the visible tokens plus a class token; the decoder
    sees the encoded visible tokens, a shared mask token at every removed valid
    position and its own class token, and never sees empty patches. Position
    embeddings are learned and factorised: a spatial table ``(1, N, D)`` plus
    a temporal table ``(1, Tp, D)``, summed per token; the decoder has its own.
    See the module docstring for the token order and the mask convention.
    """

    def __init__(self, config: MAEConfig):
        super().__init__()
        if not isinstance(config, MAEConfig):
            raise ModelError(
                f"MaskedAutoencoder expects an MAEConfig; got {type(config).__name__} "
                f"(use build_model(size, **overrides) or MAEConfig.from_dict)"
            )
        self.config = config
        self.grid_size = config.grid_size
        Tp, Hp, Wp = self.grid_size
        self.num_patches = Hp * Wp
        self.num_tokens = Tp * self.num_patches
        self.patch_dim = config.tubelet * config.patch_size**2 * config.in_chans
        D, Dd = config.embed_dim, config.decoder_embed_dim

        # encoder
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed_space = nn.Parameter(torch.zeros(1, self.num_patches, D))
        self.pos_embed_time = nn.Parameter(torch.zeros(1, Tp, D))
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            Block(D, config.num_heads, config.mlp_ratio, rate) for rate in rates
        )
        self.norm = nn.LayerNorm(D, eps=1e-6)

        # decoder
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_pos_embed_space = nn.Parameter(torch.zeros(1, self.num_patches, Dd))
        self.decoder_pos_embed_time = nn.Parameter(torch.zeros(1, Tp, Dd))
        self.decoder_blocks = nn.ModuleList(
            Block(Dd, config.decoder_num_heads, config.mlp_ratio)
            for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.decoder_pred = nn.Linear(Dd, self.patch_dim)

        self._init_weights()

    def _init_weights(self):
        # Embeddings and Linear weights: truncated normal (std 0.02, cut at 2 std);
        # biases 0; LayerNorm 1 / 0; the patch embedding Xavier-uniform, as MAE
        # initialises its patch-embedding conv (as a Linear on the flattened weight).
        for p in (self.cls_token, self.mask_token):
            nn.init.trunc_normal_(p, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        # Position embeddings stay learned but start from sin-cos tables (MAE's fixed ones): nearby
        # patches start similar, which the decoder can use from the first step. From a small random
        # init, the micro model on the sample subjects stayed at the loss of predicting zeros.
        Tp, Hp, Wp = self.grid_size
        with torch.no_grad():
            for space, time in ((self.pos_embed_space, self.pos_embed_time),
                                (self.decoder_pos_embed_space, self.decoder_pos_embed_time)):
                space.copy_(sincos_table_2d(Hp, Wp, space.shape[-1])[None])
                time.copy_(sincos_table_1d(Tp, time.shape[-1])[None])
        embed = self.patch_embed.proj
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not embed:
                nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Drawn in the earlier Conv3d layout (D, C, pt, p, p) and reordered, so a seed gives the
        # same initial model as before the embedding became a Linear.
        c = self.config
        conv = torch.empty(embed.weight.shape[0], c.in_chans * c.tubelet * c.patch_size ** 2)
        nn.init.xavier_uniform_(conv)  # as a (D, C * pt * p * p) Linear
        conv = conv.view(-1, c.in_chans, c.tubelet, c.patch_size, c.patch_size)
        with torch.no_grad():
            embed.weight.copy_(conv.permute(0, 2, 3, 4, 1).reshape(embed.weight.shape))  # (D, pt * p * p * C)
        nn.init.zeros_(embed.bias)

    # ---------------------------------------------------------------- pixels <-> tokens

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Cut clips into flattened tubes.

        Parameters
        ----------
        x : Tensor, shape (B, C, T, H, W)

        Returns
        -------
        Tensor, shape (B, L, pt * p * p * C)
            Token ``t * N + i * Wp + j`` holds the tube at time step ``t``, patch
            row ``i``, column ``j``; inside a token the order is ``(pt, p, p, C)``.
        """
        masking.check_clips(x, self.config)
        B, C = x.shape[:2]
        Tp, Hp, Wp = self.grid_size
        pt, p = self.config.tubelet, self.config.patch_size
        x = x.reshape(B, C, Tp, pt, Hp, p, Wp, p)  # (B, C, Tp, pt, Hp, p, Wp, p)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, Tp, Hp, Wp, pt, p, p, C)
        return x.reshape(B, self.num_tokens, self.patch_dim)  # (B, L, pt*p*p*C)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`: ``(B, L, pt * p * p * C)`` -> ``(B, C, T, H, W)``."""
        if tokens.ndim != 3 or tokens.shape[1:] != (self.num_tokens, self.patch_dim):
            raise ModelError(
                f"unpatchify expects (B, {self.num_tokens}, {self.patch_dim}); "
                f"got {tuple(tokens.shape)}"
            )
        B = tokens.shape[0]
        Tp, Hp, Wp = self.grid_size
        pt, p, C = self.config.tubelet, self.config.patch_size, self.config.in_chans
        x = tokens.reshape(B, Tp, Hp, Wp, pt, p, p, C)  # (B, Tp, Hp, Wp, pt, p, p, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, Tp, pt, Hp, p, Wp, p)
        return x.reshape(B, C, Tp * pt, Hp * p, Wp * p)  # (B, C, T, H, W)

    # ---------------------------------------------------------------- validity and masks (see masking.py)

    def patch_valid(self, valid_mask: torch.Tensor) -> torch.Tensor:
        """Which spatial patches hold a valid pixel: ``(H, W)`` or ``(B, H, W)`` bool -> ``(1 or B, N)``."""
        return masking.patch_valid(masking.check_valid_mask(valid_mask, self.config.img_size),
                                   self.config.patch_size)

    def token_valid(self, patch_valid: torch.Tensor) -> torch.Tensor:
        """Spatial validity repeated over time steps: ``(Bv, N)`` -> ``(Bv, L)`` bool."""
        return masking.token_valid(patch_valid, self.grid_size[0])

    def sample_mask(self, patch_valid: torch.Tensor, *, mask_ratio: float | None = None,
                    generator: torch.Generator | None = None,
                    noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids_keep`` (B, L_keep) and ``mask`` (B, L) for ``patch_valid`` (B, N) or (N,), with this
        model's masking mode and ratio (``mask_ratio`` overrides it); see :func:`masking.sample_mask`."""
        ratio = (self.config.mask_ratio if mask_ratio is None
                 else masking.check_mask_ratio(mask_ratio, "mask_ratio"))
        patch_valid = masking.expand_patch_valid(patch_valid, len(patch_valid) if patch_valid.ndim == 2 else 1,
                                                 self.num_patches)  # (B, N)
        return masking.sample_mask(patch_valid, n_steps=self.grid_size[0], masking=self.config.masking,
                                   mask_ratio=ratio, generator=generator, noise=noise)

    @property
    def noise_size(self) -> int:
        """Noise values per sample that masking ranks: spatial patches (tube) or tokens (random)."""
        return self.num_patches if self.config.masking == "tube" else self.num_tokens

    def _expand_patch_valid(self, patch_valid: torch.Tensor, batch_size: int) -> torch.Tensor:
        return masking.expand_patch_valid(patch_valid, batch_size, self.num_patches)  # (B, N)

    def _valid_token_ids(self, patch_valid: torch.Tensor) -> torch.Tensor:
        return masking.valid_token_ids(patch_valid, self.grid_size[0])  # (B, L_valid)

    # ---------------------------------------------------------------- encoder, decoder, loss

    def forward_encoder(self, x: torch.Tensor, patch_valid: torch.Tensor, *,
                        mask_ratio: float | None = None,
                        generator: torch.Generator | None = None,
                        noise: torch.Tensor | None = None):
        """Mask the clips and encode the visible tokens.

        Parameters
        ----------
        x : Tensor, shape (B, C, T, H, W) or (B, L, pt * p * p * C)
            Clips, zero at invalid pixels (``forward`` sees to that), or their
            :meth:`patchify` tokens.
        patch_valid : bool Tensor, shape (N,), (1, N) or (B, N)
            From :meth:`patch_valid`.
        mask_ratio, generator, noise
            As in :meth:`sample_mask`.

        Returns
        -------
        latent : Tensor, shape (B, 1 + L_keep, D)
            The class token, then the visible tokens in ``ids_keep`` order.
        mask : Tensor, shape (B, L)
            0 = keep, 1 = remove.
        ids_keep : int64 Tensor, shape (B, L_keep)
        """
        patch_valid = self._expand_patch_valid(patch_valid, x.shape[0])  # (B, N)
        ids_keep, mask = self.sample_mask(patch_valid, mask_ratio=mask_ratio, generator=generator, noise=noise)
        if x.ndim == 3:  # tokens
            kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # (B, L_keep, P)
        else:
            kept = self.patchify_at(x, ids_keep)  # (B, L_keep, P)
        return self._encode_tokens(kept, ids_keep), mask, ids_keep

    def patchify_at(self, x: torch.Tensor, ids: torch.Tensor,
                    pixel_valid: torch.Tensor | None = None) -> torch.Tensor:
        """``patchify(x)`` at the tokens ``ids`` only, without cutting the whole clip.

        Parameters
        ----------
        x : Tensor, shape (B, C, T, H, W)
        ids : int64 Tensor, shape (B, n)
            Token indices (time-major, see the module docstring).
        pixel_valid : bool Tensor, shape (Bv, N, p, p), optional
            From :func:`masking.patch_pixels`; invalid pixels of the tokens are set to 0.

        Returns
        -------
        Tensor, shape (B, n, pt * p * p * C)
            Equal to ``torch.gather(patchify(x), 1, ids[..., None].expand(-1, -1, P))``.
        """
        B, n = ids.shape
        _, Hp, Wp = self.grid_size
        c = self.config
        p, pt = c.patch_size, c.tubelet
        tubes = x.reshape(B, c.in_chans, -1, pt, Hp, p, Wp, p)  # (B, C, Tp, pt, Hp, p, Wp, p)
        tubes = tubes.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, Tp, Hp, Wp, pt, p, p, C), a view
        step, patch = ids // self.num_patches, ids % self.num_patches  # (B, n)
        rows = torch.arange(B, device=ids.device)[:, None]  # (B, 1)
        tubes = tubes[rows, step, patch // Wp, patch % Wp]  # (B, n, pt, p, p, C): copies the n tubes only
        if pixel_valid is not None:
            valid = masking.token_pixels(pixel_valid, ids, self.num_patches)  # (B, n, p, p)
            tubes.masked_fill_(~valid[:, :, None, :, :, None], 0.0)  # in place: indexing made a copy
        return tubes.reshape(B, n, self.patch_dim)  # (B, n, P)

    def _encode_tokens(self, kept: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encode the tokens ``kept`` ``(B, L_keep, P)`` at ``ids_keep`` ``(B, L_keep)``: -> ``(B, 1 + L_keep, D)``.

        Only these tokens are embedded (the Linear never sees the others).
        """
        B = kept.shape[0]
        x = self.patch_embed(kept)  # (B, L_keep, D)
        pos = _sum_pos_embed(self.pos_embed_space, self.pos_embed_time)[0]  # (L, D)
        x = x + pos[ids_keep]  # (B, L_keep, D)
        cls = self.cls_token.expand(B, -1, -1).to(x.dtype)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + L_keep, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_keep: torch.Tensor,
                        patch_valid: torch.Tensor) -> torch.Tensor:
        """Predict the pixels of every valid token.

        Parameters
        ----------
        latent : Tensor, shape (B, 1 + L_keep, D)
            From :meth:`forward_encoder`.
        ids_keep : int64 Tensor, shape (B, L_keep)
        patch_valid : bool Tensor, shape (N,), (1, N) or (B, N)

        Returns
        -------
        pred : Tensor, shape (B, L, pt * p * p * C)
            Predicted tubes in :meth:`patchify` layout; exactly 0 at tokens of
            empty patches, which the decoder never sees.
        """
        patch_valid = self._expand_patch_valid(patch_valid, latent.shape[0])  # (B, N)
        ids_pred = masking.removed_ids(ids_keep, self.token_valid(patch_valid))  # (B, L_pred)
        x = self._decode(latent, ids_keep, ids_pred)  # (B, 1 + L_keep + L_pred, Dd)
        return self._scatter_tokens(self.decoder_pred(x[:, 1:]), torch.cat([ids_keep, ids_pred], dim=1))

    def _decode(self, latent: torch.Tensor, ids_keep: torch.Tensor, ids_pred: torch.Tensor, *,
                removed_only: bool = False) -> torch.Tensor:
        """Run the decoder on the class token, the visible tokens ``ids_keep`` (B, L_keep) and a mask
        token at each removed valid token ``ids_pred`` (B, L_pred), in that order.

        Attention and the per-token layers do not depend on the order of the tokens, so this
        equals MAE's unshuffle onto the full grid, restricted to valid tokens: the outputs
        ``x[:, 1 + L_keep:]`` are the predictions' tokens, with no scatter or gather.
        Returns ``(B, 1 + L_keep + L_pred, Dd)`` after the decoder norm, or with ``removed_only``
        the removed tokens' ``(B, L_pred, Dd)`` alone (the last block computes no other output).
        """
        x = self.decoder_embed(latent)  # (B, 1 + L_keep, Dd)
        pos = _sum_pos_embed(self.decoder_pos_embed_space, self.decoder_pos_embed_time)[0]  # (L, Dd)
        visible = x[:, 1:] + pos[ids_keep]  # (B, L_keep, Dd)
        removed = self.mask_token + pos[ids_pred]  # (B, L_pred, Dd)
        x = torch.cat([x[:, :1].to(visible.dtype), visible, removed.to(visible.dtype)], dim=1)
        # x: (B, 1 + L_keep + L_pred, Dd)
        for i, block in enumerate(self.decoder_blocks):
            last = i == len(self.decoder_blocks) - 1
            x = block(x, ids_pred.shape[1] if removed_only and last else None)
        return self.decoder_norm(x)

    def _scatter_tokens(self, y: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Token values ``(B, n, P)`` at ``ids`` ``(B, n)`` onto the full token grid ``(B, L, P)``, 0 elsewhere."""
        pred = y.new_zeros(y.shape[0], self.num_tokens, self.patch_dim)  # (B, L, P)
        return pred.scatter_(1, ids[..., None].expand(-1, -1, self.patch_dim), y)  # (B, L, P)

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     valid_mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the valid pixels of the removed tokens.

        Parameters
        ----------
        x : Tensor, shape (B, C, T, H, W)
            The target clips (values at invalid pixels are ignored).
        pred : Tensor, shape (B, L, pt * p * p * C)
        mask : Tensor, shape (B, L)
            0 = keep, 1 = remove; the loss covers removed tokens only.
        valid_mask : bool Tensor, shape (H, W) or (B, H, W)

        Returns
        -------
        Tensor, float32 scalar
            For each clip ``sum(mask * valid * (pred - target)**2) / sum(mask * valid)``
            over its pixels (0 when nothing is removed), averaged over the clips. With ``norm_pix_loss`` the target
            of each token is first normalised by the mean/std of its valid pixels.
        """
        valid_mask = masking.check_valid_mask(valid_mask, self.config.img_size, device=x.device)  # (Bv, H, W)
        patch_valid = self._expand_patch_valid(self.patch_valid(valid_mask), x.shape[0])  # (B, N)
        predicted = mask.bool() & self.token_valid(patch_valid)  # (B, L): removed and valid
        ids_pred = predicted.nonzero()[:, 1].view(x.shape[0], -1)  # (B, L_pred), ascending
        y = torch.gather(pred, 1, ids_pred[..., None].expand(-1, -1, self.patch_dim))  # (B, L_pred, P)
        return self._predicted_loss(x, y, ids_pred, masking.patch_pixels(valid_mask, self.config.patch_size))

    def _predicted_loss(self, x: torch.Tensor, y: torch.Tensor, ids_pred: torch.Tensor,
                        pixel_valid: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_loss` from the predictions ``y`` ``(B, L_pred, P)`` of the removed valid tokens
        ``ids_pred`` ``(B, L_pred)`` alone; ``pixel_valid`` ``(Bv, N, p, p)`` from :func:`masking.patch_pixels`.

        Only those tokens' targets are cut from ``x``; invalid pixels are 0 in the target (even
        where ``x`` holds NaN) and in the prediction, so they add nothing to the error.
        """
        B, n = ids_pred.shape
        c = self.config
        target = self.patchify_at(x, ids_pred, pixel_valid).float()  # (B, L_pred, P), 0 at invalid pixels
        valid = masking.token_pixels(pixel_valid, ids_pred, self.num_patches)  # (B, L_pred, p, p)
        count = valid.sum(dim=(2, 3)) * (c.tubelet * c.in_chans)  # (B, L_pred) valid pixels per token
        weight = valid[:, :, None, :, :, None].float()  # (B, L_pred, 1, p, p, 1): valid pixels in the token layout
        tokens = (B, n, c.tubelet, c.patch_size, c.patch_size, c.in_chans)
        if c.norm_pix_loss:
            mean = target.sum(dim=-1, keepdim=True) / count[..., None].clamp(min=1)  # (B, L_pred, 1)
            centred = (target - mean).view(tokens) * weight  # (B, L_pred, pt, p, p, C)
            var = centred.square().sum(dim=(2, 3, 4, 5)) / count.clamp(min=1)  # (B, L_pred)
            target = centred.view(B, n, -1) / (var[..., None] + 1e-6).sqrt()  # (B, L_pred, P)
        y = (y.float().view(tokens) * weight).view(B, n, -1)  # (B, L_pred, P), 0 at invalid pixels
        error = F.mse_loss(y, target, reduction="none")  # (B, L_pred, P)
        # Mean per clip, then over clips: every clip weighs the same, so the mean of
        # DDP ranks' losses equals the loss of one process holding the global batch.
        per_clip = error.sum(dim=(1, 2)) / count.sum(dim=1).clamp(min=1)  # (B,)
        return per_clip.mean()

    def forward(self, x: torch.Tensor, valid_mask, *, mask_ratio: float | None = None,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                return_pred: bool = True):
        """Mask, encode, decode and score a batch of clips.

        Parameters
        ----------
        x : Tensor, shape (B, C, T, H, W)
            Clips; pixels outside ``valid_mask`` are ignored (never seen, never scored).
        valid_mask : bool Tensor or ndarray, shape (H, W) or (B, H, W)
            Valid pixels of the grid (moved to the device of ``x``).
        mask_ratio : float, optional
            Overrides ``config.mask_ratio``.
        generator : torch.Generator, optional
            Makes the masks reproducible; on the device of ``x``.
        noise : Tensor, shape (B, noise_size), optional
            Masking noise to use instead of a draw (see :meth:`sample_mask`).
        return_pred : bool, default=True
            False: ``pred`` is None, and the prediction head runs on the removed
            tokens only (training needs the loss only).

        Returns
        -------
        loss : Tensor, float32 scalar
            See :meth:`forward_loss`.
        pred : Tensor, shape (B, L, pt * p * p * C), or None
            Predictions for every valid token (0 at empty patches); use
            :meth:`unpatchify` for images.
        mask : Tensor, shape (B, L)
            0 = keep, 1 = remove. Predicted tokens are
            ``mask.bool() & token_valid(patch_valid(valid_mask))``.
        """
        valid_mask = masking.check_inputs(x, valid_mask, self.config)  # (Bv, H, W)
        pixel_valid = masking.patch_pixels(valid_mask, self.config.patch_size)  # (Bv, N, p, p)
        patch_valid = self._expand_patch_valid(self.patch_valid(valid_mask), x.shape[0])  # (B, N)
        ids_keep, mask = self.sample_mask(patch_valid, mask_ratio=mask_ratio, generator=generator, noise=noise)
        ids_pred = masking.removed_ids(ids_keep, self.token_valid(patch_valid))  # (B, L_pred)
        latent = self._encode_tokens(self.patchify_at(x, ids_keep, pixel_valid), ids_keep)  # (B, 1 + L_keep, D)
        if not return_pred:  # training: only the removed tokens' outputs are computed
            y = self.decoder_pred(self._decode(latent, ids_keep, ids_pred, removed_only=True))  # (B, L_pred, P)
            return self._predicted_loss(x, y, ids_pred, pixel_valid), None, mask
        z = self._decode(latent, ids_keep, ids_pred)  # (B, 1 + L_keep + L_pred, Dd)
        y = self.decoder_pred(z[:, 1:])  # (B, L_keep + L_pred, P)
        loss = self._predicted_loss(x, y[:, ids_keep.shape[1]:], ids_pred, pixel_valid)
        return loss, self._scatter_tokens(y, torch.cat([ids_keep, ids_pred], dim=1)), mask

    def encode(self, x: torch.Tensor, valid_mask) -> dict[str, torch.Tensor]:
        """Embed clips without masking: every valid token is visible.

        Empty patches are dropped. Deterministic in eval mode. Gradients are
        tracked unless the caller uses ``torch.no_grad()``.

        Parameters
        ----------
        x : Tensor, shape (B, C, T, H, W)
        valid_mask : bool Tensor or ndarray, shape (H, W) or (B, H, W)

        Returns
        -------
        dict
            ``cls`` (B, D): the class token; ``patch_mean`` (B, D): mean of the
            token embeddings; ``tokens`` (B, L_valid, D): every valid token after
            the final norm, ascending token order; ``token_ids`` (B, L_valid):
            their token indices (time-major), to place them on the grid.
        """
        valid_mask = masking.check_inputs(x, valid_mask, self.config)  # (Bv, H, W)
        pixel_valid = masking.patch_pixels(valid_mask, self.config.patch_size)  # (Bv, N, p, p)
        patch_valid = self._expand_patch_valid(self.patch_valid(valid_mask), x.shape[0])  # (B, N)
        ids_valid = self._valid_token_ids(patch_valid)  # (B, L_valid)
        latent = self._encode_tokens(self.patchify_at(x, ids_valid, pixel_valid), ids_valid)  # (B, 1 + L_valid, D)
        tokens = latent[:, 1:]  # (B, L_valid, D)
        return {"cls": latent[:, 0], "patch_mean": tokens.mean(dim=1), "tokens": tokens,
                "token_ids": ids_valid}

    # ---------------------------------------------------------------- bookkeeping

    def num_parameters(self, part: str = "all") -> int:
        """Number of parameters of ``part``: "all", "encoder" or "decoder"."""
        if part not in ("all", "encoder", "decoder"):
            raise ModelError(f"part must be 'all', 'encoder' or 'decoder'; got {part!r}")
        return sum(
            p.numel() for name, p in self.named_parameters()
            if part == "all" or name.startswith(_DECODER_PREFIXES) == (part == "decoder")
        )

    def configure_optimizer(self, weight_decay: float, lr: float,
                            betas: tuple[float, float]) -> torch.optim.AdamW:
        """AdamW with weight decay on tensors of 2 or more dimensions only.

        Matrices (Linear and conv weights) and the embedding tables (position
        embeddings, class and mask tokens) decay; biases and LayerNorm
        parameters do not. Group sizes are logged at INFO. The fused kernel is
        used when the parameters are on CUDA.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        logger.info("weight decay on %d tensors (%s parameters), none on %d tensors "
                    "(%s parameters)", len(decay), f"{sum(p.numel() for p in decay):,}",
                    len(no_decay), f"{sum(p.numel() for p in no_decay):,}")
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        extra = {}
        has_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters
        if has_fused and params and all(p.is_cuda for p in params):
            extra["fused"] = True
        logger.info("AdamW lr=%g betas=%s fused=%s", lr, tuple(betas), extra.get("fused", False))
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), **extra)


def sincos_table_1d(n_positions: int, dim: int) -> torch.Tensor:
    """Sin-cos codes of positions ``0..n_positions-1``: ``(n_positions, dim)`` float32.

    The first half of the columns are sines and the second half cosines of
    ``position / 10000 ** (i / (dim // 2))``; an odd last column is 0.
    """
    half = dim // 2
    positions = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (n, 1)
    frequencies = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))  # (half,)
    angles = positions * frequencies  # (n, half)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, :half], table[:, half:2 * half] = angles.sin(), angles.cos()
    return table.float()


def sincos_table_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Sin-cos codes of a (height, width) patch grid in row-major order: ``(height * width, dim)``.

    The first ``dim // 2`` columns encode the row, the rest the column.
    """
    rows = sincos_table_1d(height, dim // 2)  # (height, dim // 2)
    cols = sincos_table_1d(width, dim - dim // 2)  # (width, dim - dim // 2)
    return torch.cat([rows[:, None, :].expand(height, width, -1),
                      cols[None, :, :].expand(height, width, -1)], dim=-1).reshape(height * width, dim)


def _sum_pos_embed(space: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """Factorised position embedding: space ``(1, N, D)`` + time ``(1, Tp, D)`` ->
    ``(1, Tp * N, D)``, time-major like the tokens."""
    return (time[:, :, None, :] + space[:, None, :, :]).flatten(1, 2)  # (1, L, D)


# --------------------------------------------------------------------------- named sizes

#: Architecture of each named size; every other MAEConfig field keeps its default.
#: "base" is the reference ViT-B/16 MAE (decoder 512 wide, 4 deep as in fm-MAE);
#: "micro" is for CPU tests and demos.
MODEL_SIZES: Mapping[str, Mapping[str, int]] = MappingProxyType({
    "micro": MappingProxyType(dict(embed_dim=64, depth=2, num_heads=4,
                                   decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4)),
    "tiny": MappingProxyType(dict(embed_dim=192, depth=12, num_heads=3,
                                  decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)),
    "small": MappingProxyType(dict(embed_dim=384, depth=12, num_heads=6,
                                   decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8)),
    "base": MappingProxyType(dict(embed_dim=768, depth=12, num_heads=12,
                                  decoder_embed_dim=512, decoder_depth=4, decoder_num_heads=16)),
})


def make_config(size: str = "base", **overrides) -> MAEConfig:
    """The config of a named size with ``overrides`` applied (checked like from_dict)."""
    if size not in MODEL_SIZES:
        raise ModelError(
            f"unknown model size {size!r}; known sizes: {', '.join(MODEL_SIZES)}"
        )
    return MAEConfig.from_dict({**MODEL_SIZES[size], **overrides})


def build_model(size: str = "base", **overrides) -> MaskedAutoencoder:
    """A freshly initialised :class:`MaskedAutoencoder` of a named size.

    Parameters
    ----------
    size : {"micro", "tiny", "small", "base"}, default="base"
    **overrides
        Any :class:`MAEConfig` field, e.g. ``img_size=(112, 288), tubelet=4``.

    Examples
    --------
    >>> build_model("micro", img_size=(48, 96)).config.embed_dim
    64
    """
    return MaskedAutoencoder(make_config(size, **overrides))
