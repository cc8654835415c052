"""Fourier-slice projector: central sections of a padded 3D transform (RELION `Projector`).

Values are on the 2D-image scale: the central section at rotation A equals
`fft2_centered` of the pixel-sum projection P(x, y) = Σ_z V(Aᵀ(x, y, z)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.maths.fourier import fft2_centered, fft3_centered, ifft3_centered, rfft_frequencies_2d
from ember.operators.interpolation import centred_to_half, gather, half_to_centred, half_to_centred_2d
from ember.operators.masks import radius_grid


def gridding_kernel(box: int, pad: int, *, ndim: int = 3, device=None, dtype=torch.float64) -> torch.Tensor:
    """sinc²(r / (pad·N)) on the N^ndim grid: the real-space footprint of (tri/bi)linear interpolation."""
    r = radius_grid(box, ndim, device=device).to(dtype) / (pad * box)
    return torch.sinc(r) ** 2


def pad_volume(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a centred (N,)*d volume or image to (size,)*d, keeping the centre at size/2."""
    n = volume.shape[-1]
    out = volume.new_zeros((size,) * volume.dim())
    o = size // 2 - n // 2
    out[(slice(o, o + n),) * volume.dim()] = volume
    return out


def frequency_points(window: int) -> torch.Tensor:
    """(W, W//2+1, 3) float (kx, ky, 0) of a W-sized half transform (FFTW order, Nyquist +W/2)."""
    k = rfft_frequencies_2d(window).to(torch.float64)
    return torch.cat([k, torch.zeros_like(k[..., :1])], dim=-1)


@dataclass
class Projector:
    """Padded, gridding-pre-corrected, centred half transform of a reference.

    spectrum : (P+1, P+1, P//2+1) complex for a 3D reference, (1, P+1, P//2+1) for a 2D one
    (a class average, "projected" by in-plane rotations about z), P = pad·N
    box : N (pixels); pad : padding factor; r_max : largest shell projected (≤ N/2)
    """

    spectrum: torch.Tensor
    box: int
    pad: int
    r_max: int

    @classmethod
    def from_volume(
        cls, volume: torch.Tensor, *, pad: int = 2, r_max: int | None = None, dtype=torch.complex64
    ) -> Projector:
        """Prepare (N, N, N) real `volume` (origin at N/2) for projection."""
        n = volume.shape[-1]
        corrected = volume.to(torch.float64) / gridding_kernel(n, pad, device=volume.device)
        size = pad * n
        spectrum = fft3_centered(pad_volume(corrected, size)) * (pad**3 * n)
        r = n // 2 if r_max is None else min(r_max, n // 2)
        return cls(half_to_centred(spectrum).to(dtype), n, pad, r)

    @classmethod
    def from_image(
        cls, image: torch.Tensor, *, pad: int = 2, r_max: int | None = None, dtype=torch.complex64
    ) -> Projector:
        """Prepare a 2D reference (N, N) (origin at N/2): sections at in-plane rotations A
        (R, 3, 3) about z are the rotated image's `fft2_centered`."""
        n = image.shape[-1]
        corrected = image.to(torch.float64) / gridding_kernel(n, pad, ndim=2, device=image.device)
        spectrum = fft2_centered(pad_volume(corrected, pad * n)) * pad**2
        r = n // 2 if r_max is None else min(r_max, n // 2)
        return cls(half_to_centred_2d(spectrum).to(dtype), n, pad, r)

    def project(self, rotations: torch.Tensor, *, window: int | None = None, chunk: int = 256) -> torch.Tensor:
        """Central sections for rotations (R, 3, 3) → (R, W, W//2+1) complex, FFTW order.

        W = `window` (even, ≤ N; default N). Frequencies beyond min(r_max, W/2) are zero.
        """
        w = self.box if window is None else window
        k = frequency_points(w).to(self.spectrum.device)
        inside = torch.linalg.vector_norm(k, dim=-1) <= min(self.r_max, w // 2)
        out = torch.zeros((len(rotations), w, w // 2 + 1), dtype=self.spectrum.dtype, device=k.device)
        out[:, inside] = self.project_frequencies(rotations, k[inside][:, :2], chunk=chunk)
        return out

    def project_frequencies(self, rotations: torch.Tensor, k: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
        """Section values at a list of 2D frequencies.

        rotations : (R, 3, 3); k : (K, 2) (kx, ky) in cycles per box N, |k| ≤ r_max
        returns : (R, K) complex
        """
        k3 = torch.cat([k, torch.zeros_like(k[:, :1])], dim=1).to(self.spectrum.device, torch.float32)
        rot = rotations.to(k3.device, torch.float32)
        out = torch.empty((len(rot), len(k3)), dtype=self.spectrum.dtype, device=k3.device)
        for start in range(0, len(rot), chunk):
            points = (k3[None] @ rot[start : start + chunk]) * self.pad  # (R, K, 3): p = pad·Aᵀk
            out[start : start + chunk] = gather(self.spectrum, points)
        return out

    def volume(self) -> torch.Tensor:
        """The (N, N, N) float64 map whose `from_volume` is this projector's spectrum (3D only):
        the inverse transform, windowed to N and with the gridding pre-correction undone."""
        n, pad = self.box, self.pad
        size = pad * n
        padded = ifft3_centered(centred_to_half(self.spectrum.to(torch.complex128)) / (pad**3 * n), size)
        o = size // 2 - n // 2
        vol = padded[o : o + n, o : o + n, o : o + n]
        return vol * gridding_kernel(n, pad, device=vol.device)
