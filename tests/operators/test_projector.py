import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from ember.maths.fourier import fft2_centered, ifft2_centered
from ember.maths.rotations import euler_to_matrix, random_rotations
from ember.operators.interpolation import gather, scatter_add, trilinear_corners
from ember.operators.projector import Projector
from tests.conftest import blob_volume


def real_space_projection(vol: torch.Tensor, a: torch.Tensor) -> np.ndarray:
    """P(x, y) = Σ_z V(Aᵀ(x, y, z)) by cubic interpolation in real space (reference)."""
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z], -1) @ a.numpy()  # rows: (Aᵀ r)ᵀ
    coords = np.stack([r[..., 2], r[..., 1], r[..., 0]]) + n // 2
    return map_coordinates(vol.numpy(), coords.reshape(3, -1), order=3).reshape(n, n, n).sum(0)


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (30.0, 60.0, 90.0), (-120.0, 135.0, 20.0)])
def test_projection_matches_real_space_sum(angles):
    """Asymmetric blobs: catches a transposed rotation, a wrong centre or a wrong scale."""
    n = 32
    vol = blob_volume(n)
    a = euler_to_matrix(torch.tensor([angles], dtype=torch.float64))
    img = ifft2_centered(Projector.from_volume(vol).project(a).to(torch.complex128), n)[0]
    ref = real_space_projection(vol, a[0])
    # trilinear interpolation in a 2× padded transform: a few % of the peak, sinc² corrected
    assert np.abs(img.numpy() - ref).max() < 0.04 * ref.max()
    wrong = real_space_projection(vol, a[0].T)
    if angles != (0.0, 0.0, 0.0):
        assert np.abs(img.numpy() - wrong).max() > 0.2 * ref.max()


def test_delta_at_centre_projects_to_centre_for_any_rotation():
    n = 16
    vol = torch.zeros(n, n, n, dtype=torch.float64)
    vol[n // 2, n // 2, n // 2] = 1
    rots = random_rotations(5, torch.Generator().manual_seed(0))
    imgs = ifft2_centered(Projector.from_volume(vol).project(rots).to(torch.complex128), n)
    assert all(int(i.argmax()) == (n // 2) * n + n // 2 for i in imgs)
    torch.testing.assert_close(imgs.sum(dim=(1, 2)), torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)


def test_section_scale_is_2d_image_scale():
    """Central section at A = I equals fft2_centered of the z-sum (3D map on the 2D scale).

    A compact blob at the centre, where the sinc² pre-correction is ≈ 1."""
    n = 24
    vol = blob_volume(n, blobs=((0.0, 0.0, 0.0, 2.0, 1.0),))
    sec = Projector.from_volume(vol).project(torch.eye(3, dtype=torch.float64)[None])[0]
    ref = fft2_centered(vol.sum(0))
    torch.testing.assert_close(sec[:4, :4].to(torch.complex128), ref[:4, :4], rtol=0.01, atol=1e-4)


def test_gather_scatter_are_adjoint():
    """⟨gather(v, p), u⟩ = ⟨v, scatter(u, p)⟩ (real inner product, Hermitian half included)."""
    gen = torch.Generator().manual_seed(0)
    shape = (17, 17, 9)
    vol = torch.complex(
        torch.randn(shape, generator=gen, dtype=torch.float64),
        torch.randn(shape, generator=gen, dtype=torch.float64),
    )
    pts = (torch.rand(500, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 4.5
    u = torch.complex(
        torch.randn(500, generator=gen, dtype=torch.float64),
        torch.randn(500, generator=gen, dtype=torch.float64),
    )
    lhs = (gather(vol, pts).conj() * u).real.sum()
    acc = torch.zeros((*shape, 2), dtype=torch.float64)
    scatter_add(acc, trilinear_corners(pts, shape), torch.stack([u.real, u.imag], 1))
    rhs = (vol.conj() * torch.complex(acc[..., 0], acc[..., 1])).real.sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10)


def test_window_crops_frequencies():
    vol = blob_volume(32)
    rot = random_rotations(2, torch.Generator().manual_seed(1))
    p = Projector.from_volume(vol)
    full, small = p.project(rot), p.project(rot, window=16)
    assert small.shape == (2, 16, 9)
    k = torch.arange(8.0)
    inside = (k[:, None] ** 2 + k[None] ** 2) <= 64  # window W/2 = 8 is also a resolution mask
    torch.testing.assert_close(small[:, :8, :8][:, inside], full[:, :8, :8][:, inside])
    assert (small[:, :8, :8][:, ~inside] == 0).all()


def test_volume_inverts_from_volume():
    """Projector.volume() gives back the map from_volume() prepared (complex128: to rounding)."""
    vol = blob_volume(24).double()
    back = Projector.from_volume(vol, dtype=torch.complex128).volume()
    assert float((back - vol).abs().max() / vol.abs().max()) < 1e-12
