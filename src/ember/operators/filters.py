"""Fourier filters on maps."""

from __future__ import annotations

import numpy as np
import torch

from ember.maths.fourier import fft3_centered, ifft3_centered, rfft_frequencies_3d


def lowpass_raised_cosine(volume: torch.Tensor, shell: float, width: float = 2.0) -> torch.Tensor:
    """RELION `lowPassFilterMap`: pass r < R−w/2, zero r > R+w/2, raised cosine between (R in
    Fourier shells of the N box, w = 2 shells)."""
    n = volume.shape[-1]
    r = torch.linalg.vector_norm(rfft_frequencies_3d(n, device=volume.device).to(torch.float64), dim=-1)
    edge = ((r - (shell - width / 2)) / width).clamp(0, 1)
    factor = 0.5 + 0.5 * torch.cos(torch.pi * edge)
    return ifft3_centered(fft3_centered(volume.to(torch.float64)) * factor, n)


def lowpass_ini_high(volume: torch.Tensor, ini_high_angstrom: float, pixel_size: float) -> torch.Tensor:
    """RELION `initialLowPassFilterReferences` (--ini_high): the raised cosine through 0.5 at
    N·a/ini_high Fourier shells, not rounded to a whole shell (ini_high in Å, pixel size in Å)."""
    return lowpass_raised_cosine(volume, volume.shape[-1] * pixel_size / ini_high_angstrom)


def symmetrise_map(volume: torch.Tensor, operators: torch.Tensor) -> torch.Tensor:
    """Average of a map (N, N, N) over point-group operators (G, 3, 3) acting on map (x, y, z)
    about the centre voxel N/2 (trilinear interpolation): V_sym(r) = (1/G) Σ_g V(R_gᵀ r)."""
    from scipy.ndimage import affine_transform

    vol = volume.to(torch.float64).numpy()
    c = np.full(3, volume.shape[-1] // 2, dtype=np.float64)
    out = np.zeros_like(vol)
    for r in operators.numpy():
        m = r.T[::-1, ::-1]  # (x, y, z) rotation → array (z, y, x) axes
        out += affine_transform(vol, m, offset=c - m @ c, order=1, mode="constant")
    return torch.from_numpy(out / len(operators))
