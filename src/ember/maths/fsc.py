"""Fourier shell correlation between two maps and the resolution where it crosses a threshold."""

from __future__ import annotations

import torch

from ember.maths.fourier import fft3_centered, rfft_frequencies_3d, shell_index


def fsc(map1: torch.Tensor, map2: torch.Tensor) -> torch.Tensor:
    """FSC per shell of two (N, N, N) real maps → (N//2+1,) float64, FSC(0) = 1."""
    if map1.shape != map2.shape:
        raise ValueError(f"maps differ in shape: {tuple(map1.shape)} vs {tuple(map2.shape)}")
    n = map1.shape[-1]
    f1 = fft3_centered(map1.to(torch.float64))
    f2 = fft3_centered(map2.to(torch.float64))
    return fsc_spectra(f1, f2, n)


def fsc_spectra(f1: torch.Tensor, f2: torch.Tensor, n: int) -> torch.Tensor:
    """FSC of two (N, N, N//2+1) half transforms (FFTW order) → (N//2+1,) float64."""
    shells = shell_index(rfft_frequencies_3d(n, device=f1.device)).reshape(-1)
    n_shells = n // 2 + 1
    keep = shells < n_shells
    idx = shells[keep]
    a, b = f1.reshape(-1)[keep], f2.reshape(-1)[keep]

    def shell_sum(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(n_shells, dtype=torch.float64, device=v.device)
        return out.index_add_(0, idx, v.to(torch.float64))

    num = shell_sum((a * b.conj()).real)
    den = torch.sqrt(shell_sum(a.abs() ** 2) * shell_sum(b.abs() ** 2))
    out = torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))
    out[0] = 1.0
    return out


def resolution_shell(curve: torch.Tensor, threshold: float) -> int:
    """Last shell before the FSC first drops below `threshold` (RELION: first_below − 1)."""
    below = torch.nonzero(curve[1:] < threshold)
    if len(below) == 0:
        return len(curve) - 1
    return int(below[0, 0])
