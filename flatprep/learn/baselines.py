"""A linear reference for the masked loss: principal components fitted to the visible pixels.

The loss of predicting zeros says whether a masked autoencoder predicts anything;
it does not say how much of a masked clip could be predicted at all. This
baseline answers that with the simplest model that uses the shared cortical
layout: the top principal components of the training frames (one spatial map
each), fitted per frame by ridge regression to the visible pixels and then read
at the hidden ones. The trainer scores it on the same clips, masks and pixels as
the model (``val_pca_loss`` next to ``val_loss`` and ``val_zero_loss``).

On the sample subjects it shows that the masked pixels are predictable: 8
components reach about 0.6 where zeros score 1.0 (tube masking at 0.9).

Conventions
-----------
frames : (n_frames, n_valid) float
    Valid pixels of normalised frames, in the grid's row-major order.
clips : (B, C, T, H, W); token_mask : (B, L) with 1 = hidden, time-major tokens
    As in :mod:`flatprep.learn.model`.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PCABaseline", "DEFAULT_RIDGE"]

#: Ridge strength relative to the fraction of pixels that are visible: with unit-norm
#: component maps the Gram matrix is about that fraction times the identity, so 0.1
#: shrinks the coefficients by about 10 % whatever the mask ratio or grid.
DEFAULT_RIDGE = 0.1


class PCABaseline:
    """Predict hidden pixels from visible ones with the training frames' top components.

    Parameters
    ----------
    basis : tensor, float32, shape (n_components, n_valid)
        Orthonormal component maps over the valid pixels.
    valid_mask : bool array or tensor, shape (H, W)
        Valid pixels of the grid; ``n_valid`` of them.
    ridge : float, default=DEFAULT_RIDGE
    """

    def __init__(self, basis: torch.Tensor, valid_mask, *, ridge: float = DEFAULT_RIDGE):
        valid = torch.as_tensor(np.asarray(valid_mask), dtype=torch.bool)
        basis = torch.as_tensor(basis, dtype=torch.float32)
        if valid.ndim != 2 or basis.ndim != 2 or basis.shape[1] != int(valid.sum()):
            raise ValueError(f"basis must be (n_components, n_valid={int(valid.sum())}) for a 2D valid mask; "
                             f"got basis {tuple(basis.shape)} and mask {tuple(valid.shape)}")
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0; got {ridge}")
        self.basis, self.valid_mask, self.ridge = basis, valid, float(ridge)
        self._parts: dict = {}  # (patch_size, device) -> what predict needs there

    def _patch_parts(self, patch_size: int, device) -> tuple:
        """Per-patch Gram matrices (N, k, k) of the basis, each valid pixel's patch (P,), the basis
        (k, P) and the valid mask (H, W), on ``device``; computed once per patch size and device."""
        key = (int(patch_size), str(device))
        if key not in self._parts:
            height, width = self.valid_mask.shape
            rows, cols = torch.nonzero(self.valid_mask, as_tuple=True)  # row-major, as the pixels
            patch = (rows // patch_size) * (width // patch_size) + cols // patch_size  # (P,)
            columns = self.basis.T  # (P, k)
            grams = torch.zeros((height // patch_size) * (width // patch_size), self.n_components,
                                self.n_components)
            grams.index_add_(0, patch, columns[:, :, None] * columns[:, None, :])  # (N, k, k)
            self._parts[key] = tuple(t.to(device) for t in (grams, patch, self.basis, self.valid_mask))
        return self._parts[key]

    @property
    def n_components(self) -> int:
        """Component maps in the basis."""
        return self.basis.shape[0]

    @classmethod
    def fit(cls, frames, valid_mask, *, n_components: int = 8, ridge: float = DEFAULT_RIDGE) -> "PCABaseline":
        """The top ``n_components`` right singular vectors of ``frames``.

        Parameters
        ----------
        frames : array or tensor, shape (n_frames, n_valid)
            Training frames, normalised as the model sees them. Not centred: the
            stored data are z-scored per vertex, so every pixel's mean is about 0.
        valid_mask : array, shape (H, W)
        n_components : int, default=8
            At most ``min(n_frames, n_valid)``.
        """
        frames = torch.as_tensor(np.asarray(frames), dtype=torch.float64)
        if frames.ndim != 2 or not 1 <= n_components <= min(frames.shape):
            raise ValueError(f"need 1 <= n_components <= min{tuple(frames.shape)} frames x pixels; "
                             f"got {n_components}")
        # Through the (n_frames, n_frames) Gram matrix: the trainer passes a few hundred frames of
        # 20,000-80,000 pixels, so this is far cheaper than an SVD of the frames themselves.
        gram = frames @ frames.T  # (n_frames, n_frames)
        values, vectors = torch.linalg.eigh(gram)  # ascending
        top = torch.flip(torch.arange(len(values))[-n_components:], [0])
        scale = values[top].clamp(min=1e-12).sqrt()  # singular values
        basis = (vectors[:, top].T @ frames) / scale[:, None]  # (k, n_valid), orthonormal rows
        return cls(basis.float(), valid_mask, ridge=ridge)

    def predict(self, clips: torch.Tensor, token_mask: torch.Tensor, *, tubelet: int,
                patch_size: int) -> torch.Tensor:
        """Clips rebuilt from their visible pixels.

        Parameters
        ----------
        clips : tensor, shape (B, 1, T, H, W)
        token_mask : tensor, shape (B, Tp * Hp * Wp)
            1 = hidden, 0 = visible, time-major (``T = Tp * tubelet``,
            ``H = Hp * patch_size``).
        tubelet, patch_size : int

        Returns
        -------
        tensor, float32, shape (B, 1, T, H, W)
            The component fit of every frame, 0 outside the valid pixels. Hidden
            pixels never enter the fit.
        """
        B, C, T, H, W = clips.shape
        if C != 1 or tuple(self.valid_mask.shape) != (H, W):
            raise ValueError(f"clips must be (B, 1, T, {tuple(self.valid_mask.shape)}); got {tuple(clips.shape)}")
        grams, patch, basis, valid = self._patch_parts(patch_size, clips.device)
        Tp, k = T // tubelet, self.n_components
        visible = (token_mask == 0).view(B, Tp, len(grams)).float()  # (B, Tp, N); a tube is one token
        pixel_visible = visible[:, :, patch]  # (B, Tp, P)
        # Visibility is constant within a tube, so one Gram matrix serves its `tubelet` frames.
        gram = torch.einsum("btn,nkj->btkj", visible, grams)  # (B, Tp, k, k), over visible pixels
        eye = torch.eye(k, device=clips.device)
        ridge = (self.ridge * pixel_visible.mean(dim=-1))[..., None, None] * eye  # (B, Tp, k, k)
        gram = gram + ridge + 1e-6 * eye  # a tube with nothing visible -> 0
        frames = clips[:, 0][:, :, valid].float().view(B, Tp, tubelet, -1)  # (B, Tp, pt, P)
        rhs = torch.einsum("kp,btfp->btfk", basis, frames * pixel_visible[:, :, None])  # (B, Tp, pt, k)
        coefficients = torch.linalg.solve(gram[:, :, None], rhs[..., None])[..., 0]  # (B, Tp, pt, k)
        rebuilt = torch.zeros(B, T, H, W, device=clips.device)
        rebuilt[:, :, valid] = (coefficients @ basis).view(B, T, -1)  # (B, T, P)
        return rebuilt[:, None]  # (B, 1, T, H, W)
