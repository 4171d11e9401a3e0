"""Inputs shared by the model, masking and reference tests: a small grid with a brain-like mask,
smooth clips, seeded generators, and the micro model built on that grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flatprep.learn.model import MaskedAutoencoder, build_model

# A small grid, with 8-pixel patches so that the ellipse mask below leaves a
# realistic mix of full, partial and empty patches: 6 x 12 spatial patches,
# 4 time steps of 2 frames, 288 tokens.
GRID = (48, 96)
SMALL = dict(img_size=GRID, patch_size=8, clip_frames=8, tubelet=2)


def hemisphere_mask(height: int = GRID[0], width: int = GRID[1]) -> np.ndarray:
    """Two elliptical 'hemispheres' side by side, each with a medial-wall hole: (H, W) bool."""
    rows, cols = np.mgrid[:height, :width] + 0.5
    mask = np.zeros((height, width), bool)
    for centre in (0.25 * width, 0.75 * width):
        inside = ((rows - height / 2) / (0.42 * height)) ** 2 + (
            (cols - centre) / (0.22 * width)
        ) ** 2 <= 1
        hole = ((rows - height / 2) / (0.12 * height)) ** 2 + (
            (cols - centre) / (0.08 * width)
        ) ** 2 <= 1
        mask |= inside & ~hole
    return mask


@pytest.fixture(scope="module")
def valid_mask() -> torch.Tensor:
    return torch.from_numpy(hemisphere_mask())


@pytest.fixture
def model() -> MaskedAutoencoder:
    torch.manual_seed(0)
    return build_model("micro", **SMALL)


def smooth_clips(n: int, valid: torch.Tensor, *, frames: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth space-time waves, z-scored over the valid pixels of each clip: (n, 1, T, H, W)."""
    g = torch.Generator().manual_seed(seed)
    height, width = valid.shape
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    r = torch.linspace(0, 1, height)[None, :, None]
    c = torch.linspace(0, 1, width)[None, None, :]
    clips = []
    for _ in range(n):
        x = torch.zeros(frames, height, width)
        for _ in range(3):
            kr, kc, w, phase = (torch.rand(4, generator=g) * torch.tensor([6.0, 6.0, 0.5, 6.3]))
            x = x + torch.sin(kr * r * 3.14 + kc * c * 3.14 + w * t + phase)
        values = x[:, valid]
        x = (x - values.mean()) / values.std()
        clips.append(torch.where(valid, x, torch.zeros(())))
    return torch.stack(clips)[:, None]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
