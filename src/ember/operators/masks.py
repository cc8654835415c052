"""Real-space soft masks (RELION raised-cosine edges)."""

from __future__ import annotations

import torch


def radius_grid(box: int, ndim: int, *, device=None) -> torch.Tensor:
    """Distance in pixels from the centre (index N/2) of an N^ndim grid."""
    c = torch.arange(box, device=device, dtype=torch.float64) - box // 2
    grids = torch.meshgrid(*([c] * ndim), indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def soft_sphere(box: int, radius_px: float, edge_px: float, *, ndim: int = 3, device=None) -> torch.Tensor:
    """1 inside `radius_px`, raised-cosine fall-off over `edge_px` outside it, 0 beyond."""
    r = radius_grid(box, ndim, device=device)
    if edge_px <= 0:
        return (r <= radius_px).to(torch.float64)
    x = ((r - radius_px) / edge_px).clamp(0, 1)
    return 0.5 + 0.5 * torch.cos(torch.pi * x)


def soft_mask_outside(volume: torch.Tensor, radius_px: float, edge_px: float) -> torch.Tensor:
    """RELION `softMaskOutsideMap`: blend to the edge-weighted background mean outside radius."""
    mask = soft_sphere(volume.shape[-1], radius_px, edge_px, ndim=volume.dim(), device=volume.device)
    mask = mask.to(volume.dtype)
    outside = 1 - mask
    background = (volume * outside).sum() / outside.sum().clamp(min=1e-12)
    return volume * mask + background * outside
