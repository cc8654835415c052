"""Shared fixtures: tiny maps, seeded generators."""

from __future__ import annotations

import pytest
import torch


def blob_volume(n: int, blobs=((3.0, -1.0, 5.0, 8.0, 1.0), (-4.0, 4.0, 0.0, 5.0, 0.5))) -> torch.Tensor:
    """(n, n, n) float64 sum of Gaussian blobs (x, y, z centre offsets in px, 2σ², height): an
    asymmetric test object, origin at n/2."""
    c = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(n, n, n, dtype=torch.float64)
    for bx, by, bz, s, h in blobs:
        vol += h * torch.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / s)
    return vol


@pytest.fixture
def random_object():
    """(24, 24, 24) float64 band-unlimited random object inside a soft sphere."""
    from ember.operators.masks import soft_sphere

    gen = torch.Generator().manual_seed(0)
    return torch.randn(24, 24, 24, dtype=torch.float64, generator=gen) * soft_sphere(24, 8, 2)
