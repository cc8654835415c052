"""Trilinear interpolation in a centred, Hermitian-half, padded Fourier volume (RELION layout).

A *centred half volume* is a (P+1, P+1, P//2+1) array indexed [z, y, x] holding frequency
(x, y − P/2, z − P/2) in padded-grid units: x ≥ 0 only (the x < 0 half is the complex
conjugate of the −p point), and the last y and z planes repeat the first ones (±P/2 are the same
frequency), so that every point with |p| ≤ P/2 has all 8 neighbours in the array. A 2D reference
(a class average) is the same array with a single z plane (1, P+1, P//2+1): points with z = 0 get
bilinear weights, so the same gather and scatter serve 2D and 3D.
Gather (projection) and scatter (back-projection) use identical weights: they are adjoint.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def half_to_centred(spectrum: torch.Tensor) -> torch.Tensor:
    """(P, P, P//2+1) FFTW-order half transform → (P+1, P+1, P//2+1) centred half volume."""
    c = torch.fft.fftshift(spectrum, dim=(0, 1))
    c = torch.cat([c, c[:1]], dim=0)
    return torch.cat([c, c[:, :1]], dim=1)


def centred_to_half(volume: torch.Tensor) -> torch.Tensor:
    """Inverse of `half_to_centred` (drops the repeated planes) → (P, P, P//2+1), FFTW order."""
    return torch.fft.ifftshift(volume[:-1, :-1], dim=(0, 1))


def half_to_centred_2d(spectrum: torch.Tensor) -> torch.Tensor:
    """(P, P//2+1) FFTW-order 2D half transform → (1, P+1, P//2+1) centred half volume (one z plane)."""
    c = torch.fft.fftshift(spectrum, dim=0)
    return torch.cat([c, c[:1]], dim=0)[None]


def centred_to_half_2d(volume: torch.Tensor) -> torch.Tensor:
    """Inverse of `half_to_centred_2d` → (P, P//2+1), FFTW order."""
    return torch.fft.ifftshift(volume[0, :-1], dim=0)


def fold_periodic(volume: torch.Tensor) -> torch.Tensor:
    """Sum the repeated last planes of an accumulator into the first ones and re-copy them (only y
    for a single-plane 2D accumulator)."""
    v = volume.clone()
    if v.shape[0] > 1:
        v[0] += v[-1]
        v[-1] = v[0]
    v[:, 0] += v[:, -1]
    v[:, -1] = v[:, 0]
    return v


class Corners(NamedTuple):
    """Trilinear footprint of M points: flat index of the lowest corner (M,), fractional
    offsets fx, fy, fz (M,), strides to the +1 neighbours (M,) (0 at the array edge), and
    conjugate flags (M,) for points taken from the x < 0 half."""

    base: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    fz: torch.Tensor
    dx: torch.Tensor
    dy: torch.Tensor
    dz: torch.Tensor
    conj: torch.Tensor

    def terms(self):
        """Yield (flat index (M,), weight (M,)) for the 8 neighbours."""
        gx, gy, gz = 1 - self.fx, 1 - self.fy, 1 - self.fz
        for oz, wz in ((0, gz), (self.dz, self.fz)):
            for oy, wy in ((0, gy), (self.dy, self.fy)):
                wzy = wz * wy
                for ox, wx in ((0, gx), (self.dx, self.fx)):
                    yield self.base + (oz + oy + ox), wzy * wx


def trilinear_corners(points: torch.Tensor, shape: tuple[int, ...]) -> Corners:
    """Points (..., 3) as (x, y, z) padded-grid frequencies with |p| ≤ P/2 → their 8 neighbours
    in a centred half volume of `shape` (P+1, P+1, P//2+1)."""
    nz, ny, nx = shape[:3]
    half = (ny - 1) // 2
    pts = points.reshape(-1, 3)
    conj = pts[:, 0] < 0
    pts = torch.where(conj[:, None], -pts, pts)
    x = pts[:, 0].clamp(0, nx - 1)  # clamps only round-off beyond |p| = P/2
    y = (pts[:, 1] + half).clamp(0, ny - 1)
    z = (pts[:, 2] + half).clamp(0, nz - 1)
    x0, y0, z0 = torch.floor(x), torch.floor(y), torch.floor(z)
    xi, yi, zi = x0.long(), y0.long(), z0.long()
    return Corners(
        base=(zi * ny + yi) * nx + xi,
        fx=x - x0,
        fy=y - y0,
        fz=z - z0,
        dx=(xi < nx - 1).long(),
        dy=(yi < ny - 1).long() * nx,
        dz=(zi < nz - 1).long() * (nx * ny),
        conj=conj,
    )


def gather(volume: torch.Tensor, points: torch.Tensor, corners: Corners | None = None) -> torch.Tensor:
    """Trilinear samples of a centred half volume (complex or real) at points (..., 3) → (...)."""
    c = trilinear_corners(points, tuple(volume.shape)) if corners is None else corners
    flat = volume.reshape(-1)
    out = torch.zeros(c.base.shape, dtype=volume.dtype, device=volume.device)
    for idx, w in c.terms():
        out += flat[idx] * w.to(flat.real.dtype)
    if out.is_complex():
        out = torch.where(c.conj, out.conj(), out)
    return out.reshape(points.shape[:-1])


def scatter_add(volume: torch.Tensor, corners: Corners, values: torch.Tensor) -> None:
    """Adjoint of `gather`: add values (M, C) real at the points of `corners` into a centred
    half volume stored as real channels (P+1, P+1, P//2+1, C), in place. Channel 1 is the
    imaginary part of a complex quantity when C ≥ 2: it is negated for conjugated points."""
    flat = volume.view(-1, volume.shape[-1])
    vals = values.to(flat.dtype)
    if vals.shape[1] >= 2:
        vals = vals.clone()
        vals[:, 1] = torch.where(corners.conj, -vals[:, 1], vals[:, 1])
    for idx, w in corners.terms():
        flat.index_add_(0, idx, vals * w.to(flat.dtype)[:, None])
