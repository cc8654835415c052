"""Gold-standard FSC from the halves' Fourier sums (issue 7 bug B: no FSC over data-free shells)."""

import torch

from ember.inference.mstep import unregularised_fsc
from ember.maths.rotations import euler_to_matrix
from ember.operators.projector import Projector
from ember.operators.reconstructor import Reconstructor, half_set_fsc
from tests.conftest import blob_volume


def _halves(r_max: int, noise: float, seed: int = 0) -> list[Reconstructor]:
    n = 32
    proj = Projector.from_volume(blob_volume(n))
    g = torch.Generator().manual_seed(seed)
    rot = euler_to_matrix(torch.rand(400, 3, generator=g, dtype=torch.float64) * torch.tensor([360, 180, 360.0]))
    images = proj.project(rot).to(torch.complex128)
    scale = noise * images.abs().mean()
    halves = []
    for _ in range(2):
        eps = torch.complex(torch.randn(images.shape, generator=g, dtype=torch.float64),
                            torch.randn(images.shape, generator=g, dtype=torch.float64))
        rec = Reconstructor(n, r_max=r_max)
        rec.insert(images + scale * eps, torch.ones(images.shape, dtype=torch.float64), rot)
        rec.prepare()
        halves.append(rec)
    return halves


def test_fsc_is_zero_beyond_the_window_the_data_had():
    """Halves inserted up to shell 6 of 16: every shell beyond 6 holds no data and must read 0
    (the FSC of real-space reconstructions read 0.35–0.66 there), shells inside keep their signal."""
    curve = unregularised_fsc(*_halves(r_max=6, noise=2.0))
    assert torch.all(curve[7:] == 0)
    assert curve[1:7].min() > 0.8


def test_fsc_falls_with_noise_and_is_one_for_identical_halves():
    clean = half_set_fsc(*_halves(r_max=16, noise=0.0))
    assert torch.allclose(clean, torch.ones_like(clean), atol=1e-9)
    low, high = half_set_fsc(*_halves(r_max=16, noise=1.0)), half_set_fsc(*_halves(r_max=16, noise=8.0))
    assert low[1:10].mean() > high[1:10].mean() + 0.1
    assert high[-4:].abs().mean() < 0.2
