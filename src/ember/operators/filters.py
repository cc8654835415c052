"""Fourier filters on maps."""

from __future__ import annotations

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
