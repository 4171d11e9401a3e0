"""Valid pixels <-> images: the one place that turns packed grid values into flat-map images.

Everything flatprep stores is packed: a frame is the ``P`` values of the grid's
valid pixels in row-major order. Images are needed by the model (patches), QC
figures and reconstruction figures; all of them go through :class:`PixelIndex`.

The scatter is written as a gather: pixel ``j`` of the ``H x W`` image takes
column ``gather[j]`` of the values padded with one zero column, so background
pixels read that zero (or ``fill``). One ``index_select`` on the device, no
Python loop, no boolean-mask assignment (which is several times slower).

Works on numpy arrays (QC, no torch needed) and on torch tensors of any
device and dtype (training and embedding: after the transfer to the GPU).
"""

from __future__ import annotations

import numpy as np

from .exceptions import FlatmapError

__all__ = ["PixelIndex"]


class PixelIndex:
    """Index between a grid's ``P`` valid pixels and its ``(H, W)`` image.

    Parameters
    ----------
    mask : array-like of bool, shape (H, W)
        Valid pixels (a grid's ``mask``; a shard's ``/grid/mask``).

    Attributes
    ----------
    mask : ndarray, bool, shape (H, W)
    shape : (int, int)
        ``(H, W)``.
    n_pixels : int
        ``P``, the number of valid pixels.
    flat : ndarray, int64, shape (P,)
        Position of each valid pixel in the flattened image (row-major).
    gather : ndarray, int64, shape (H * W,)
        For each image pixel its column in the values, ``P`` (the padding
        column) off the mask.
    """

    def __init__(self, mask):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise FlatmapError(f"a pixel index needs a (height, width) mask, got shape {mask.shape}")
        self.mask = mask.astype(bool)
        self.shape = tuple(int(s) for s in mask.shape)
        self.flat = np.flatnonzero(self.mask.ravel())
        self.n_pixels = int(self.flat.size)
        self.gather = np.full(self.mask.size, self.n_pixels, dtype=np.int64)
        self.gather[self.flat] = np.arange(self.n_pixels)
        self._torch: dict = {}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_torch"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _torch={})

    def _index(self, name: str, device):
        """``flat`` or ``gather`` as a torch tensor on ``device`` (kept per device)."""
        import torch

        key = (name, str(device))
        if key not in self._torch:
            self._torch[key] = torch.from_numpy(getattr(self, name)).to(device)
        return self._torch[key]

    def _check_values(self, values) -> None:
        if values.shape[-1] != self.n_pixels:
            raise FlatmapError(f"expected values with a last axis of {self.n_pixels:,} valid pixels for this "
                               f"{self.shape[0]}x{self.shape[1]} grid, got shape {tuple(values.shape)}")

    def to_image(self, values, *, fill: float = 0.0):
        """Scatter packed values into images.

        Parameters
        ----------
        values : ndarray or Tensor, shape (..., P)
            Not modified.
        fill : float, default=0.0
            Value off the mask (NaN for plotting).

        Returns
        -------
        ndarray or Tensor, shape (..., H, W)
            Same kind, device and dtype as ``values`` (numpy: float64 when
            ``fill`` is NaN and ``values`` are integers).
        """
        self._check_values(values)
        H, W = self.shape
        if isinstance(values, np.ndarray) or not hasattr(values, "device"):
            values = np.asarray(values)
            dtype = np.result_type(values.dtype, np.min_scalar_type(fill)) if np.isnan(fill) else values.dtype
            padded = np.concatenate([values.astype(dtype, copy=False),
                                     np.full(values.shape[:-1] + (1,), fill, dtype=dtype)], axis=-1)
            return np.take(padded, self.gather, axis=-1).reshape(values.shape[:-1] + (H, W))
        import torch

        padded = torch.cat([values, values.new_full(values.shape[:-1] + (1,), fill)], dim=-1)  # (..., P + 1)
        image = torch.index_select(padded, -1, self._index("gather", values.device))           # (..., H * W)
        return image.view(*values.shape[:-1], H, W)                                           # (..., H, W)

    def to_values(self, images):
        """Gather the valid pixels of images: ``(..., H, W)`` -> ``(..., P)`` (a new array)."""
        if tuple(images.shape[-2:]) != self.shape:
            raise FlatmapError(f"expected images of shape (..., {self.shape[0]}, {self.shape[1]}), "
                               f"got {tuple(images.shape)}")
        if isinstance(images, np.ndarray) or not hasattr(images, "device"):
            images = np.asarray(images)
            return np.take(images.reshape(images.shape[:-2] + (-1,)), self.flat, axis=-1)
        import torch

        flat = images.reshape(*images.shape[:-2], -1)                                          # (..., H * W)
        return torch.index_select(flat, -1, self._index("flat", images.device))                # (..., P)

    def torch_mask(self, device=None):
        """The mask as a bool tensor ``(H, W)`` on ``device``."""
        import torch

        key = ("mask", str(device))
        if key not in self._torch:
            self._torch[key] = torch.from_numpy(self.mask.copy()).to(device)
        return self._torch[key]
