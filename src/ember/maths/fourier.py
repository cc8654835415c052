"""FFT conventions (RELION's), frequency grids, shells and radial averages.

Images and volumes have their real-space origin at index N//2. Transforms are real-to-complex
half transforms, forward-normalised (1/M), with the last axis kx = 0 … N/2 and the other axes in
FFTW order where index N/2 is the *positive* Nyquist frequency +N/2 (RELION), not −N/2 (numpy).
"""

from __future__ import annotations

import torch


def fftw_frequencies(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(n,) integer frequencies of a full FFT axis in FFTW order, Nyquist as +n/2 (RELION)."""
    i = torch.arange(n, device=device)
    return torch.where(i <= n // 2, i, i - n)


def rfft_frequencies_2d(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n//2+1, 2) integer (kx, ky) of a 2D half transform in FFTW order, cycles/box."""
    ky = fftw_frequencies(n, device=device)
    kx = torch.arange(n // 2 + 1, device=device)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def rfft_frequencies_3d(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n, n//2+1, 3) integer (kx, ky, kz) of a 3D half transform in FFTW order."""
    kz = fftw_frequencies(n, device=device)
    kx = torch.arange(n // 2 + 1, device=device)
    gz, gy, gx = torch.meshgrid(kz, kz, kx, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1)


def shell_index(k: torch.Tensor) -> torch.Tensor:
    """Shell of each frequency vector (..., d) → (...,) long: ROUND(|k|), half away from zero."""
    r = torch.linalg.vector_norm(k.to(torch.float64), dim=-1)
    return torch.floor(r + 0.5).long()


def hermitian_unique_mask_2d(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n//2+1) bool: False on the kx = 0, ky < 0 half column (mates of ky > 0)."""
    k = rfft_frequencies_2d(n, device=device)
    return ~((k[..., 0] == 0) & (k[..., 1] < 0))


def fft2_centered(images: torch.Tensor) -> torch.Tensor:
    """(..., N, N) real, origin at N/2 → (..., N, N//2+1) complex, forward-normalised (1/N²)."""
    shifted = torch.fft.ifftshift(images, dim=(-2, -1))
    return torch.fft.rfft2(shifted, norm="forward")


def ifft2_centered(spectra: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `fft2_centered`: (..., N, N//2+1) → (..., N, N) real, origin at N/2."""
    images = torch.fft.irfft2(spectra, s=(n, n), norm="forward")
    return torch.fft.fftshift(images, dim=(-2, -1))


def fft3_centered(volume: torch.Tensor) -> torch.Tensor:
    """(N, N, N) real, origin at N/2 → (N, N, N//2+1) complex, forward-normalised (1/N³)."""
    return torch.fft.rfftn(torch.fft.ifftshift(volume, dim=(-3, -2, -1)), dim=(-3, -2, -1), norm="forward")


def ifft3_centered(spectrum: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `fft3_centered` → (N, N, N) real, origin at N/2."""
    vol = torch.fft.irfftn(spectrum, s=(n, n, n), dim=(-3, -2, -1), norm="forward")
    return torch.fft.fftshift(vol, dim=(-3, -2, -1))


def shift_phases_2d(n: int, shifts_px: torch.Tensor) -> torch.Tensor:
    """Phase factors exp(−2πi k·t/N) that move image content by +t.

    shifts_px : (..., 2) float, (x, y) in pixels
    returns : (..., N, N//2+1) complex
    """
    k = rfft_frequencies_2d(n, device=shifts_px.device).to(shifts_px.dtype)
    phase = k[..., 0] * shifts_px[..., 0, None, None] + k[..., 1] * shifts_px[..., 1, None, None]
    return torch.polar(torch.ones_like(phase), -2 * torch.pi * phase / n)


def radial_average(values: torch.Tensor, shells: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Mean of `values` per shell (shells ≥ n_shells ignored) → (n_shells,) float64."""
    keep = shells < n_shells
    idx = shells[keep]
    v = values[keep].to(torch.float64)
    sums = torch.zeros(n_shells, dtype=torch.float64, device=values.device).index_add_(0, idx, v)
    counts = torch.zeros(n_shells, dtype=torch.float64, device=values.device).index_add_(0, idx, torch.ones_like(v))
    return sums / counts.clamp(min=1)


def resolution_angstrom(shell: int | torch.Tensor, box: int, pixel_size: float):
    """Resolution d = N·a / i in Å of shell i (999 for i = 0)."""
    if isinstance(shell, torch.Tensor):
        s = shell.to(torch.float64)
        return torch.where(s > 0, box * pixel_size / s.clamp(min=1), torch.full_like(s, 999.0))
    return 999.0 if shell == 0 else box * pixel_size / shell


def shell_of_resolution(d_angstrom: float, box: int, pixel_size: float) -> int:
    """Shell index of a resolution in Å: ROUND(N·a/d)."""
    return int(box * pixel_size / d_angstrom + 0.5)
