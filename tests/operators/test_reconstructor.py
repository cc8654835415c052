import pytest
import torch

from ember.maths.fsc import fsc
from ember.maths.rotations import random_rotations
from ember.maths.symmetry import symmetry_operators
from ember.operators.projector import Projector
from ember.operators.reconstructor import Reconstructor, blob_transform, tau2_from_fsc
from tests.conftest import blob_volume


def round_trip(vol, rotations, *, symmetry=None, r_max=None):
    slices = Projector.from_volume(vol).project(rotations)
    rec = Reconstructor(vol.shape[0], r_max=r_max)
    for i in range(0, len(rotations), 500):
        rec.insert(slices[i : i + 500], torch.ones(slices[i : i + 500].shape), rotations[i : i + 500])
    return rec.reconstruct(symmetry=symmetry).double()


def test_project_backproject_round_trip(random_object):
    """All projections of a random object back-project to the object: FSC > 0.99 to 0.9·Nyquist."""
    rots = random_rotations(3000, torch.Generator().manual_seed(1))
    out = round_trip(random_object, rots)
    curve = fsc(out, random_object)
    assert curve[: int(0.9 * 12) + 1].min() > 0.99


def test_round_trip_preserves_amplitude():
    """Gridding correction and the 2D↔3D scale: a band-limited object comes back at scale 1."""
    vol = blob_volume(24)
    out = round_trip(vol, random_rotations(1000, torch.Generator().manual_seed(4)))
    ratio = (out * vol).sum() / (vol**2).sum()
    assert float(ratio) == pytest.approx(1.0, abs=0.01)
    assert float((out - vol).abs().max()) < 0.02 * float(vol.max())


def test_maxres_limits_frequencies(random_object):
    rots = random_rotations(1500, torch.Generator().manual_seed(2))
    out = round_trip(random_object, rots, r_max=6)
    curve = fsc(out, random_object)
    assert curve[:6].min() > 0.95
    assert curve[10:].abs().max() < 0.1  # trilinear footprint leaks ≤ 3 shells


def d7_object(n=32):
    """A D7-symmetric object: 14 blobs at the D7 images of one point."""
    c = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(n, n, n, dtype=torch.float64)
    for op in symmetry_operators("D7"):
        px, py, pz = (op @ torch.tensor([7.0, 2.0, 4.0], dtype=torch.float64)).tolist()
        vol += torch.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / 3)
    return vol


def test_d7_from_one_fourteenth_of_views_equals_c1_from_all():
    vol = d7_object()
    rots = random_rotations(2800, torch.Generator().manual_seed(3))
    c1 = round_trip(vol, rots)
    d7 = round_trip(vol, rots[:200], symmetry=symmetry_operators("D7"))
    curve = fsc(d7, c1)
    assert curve[: 8 + 1].min() > 0.95  # up to half Nyquist
    # without symmetry the 200 views are clearly worse
    c1_few = round_trip(vol, rots[:200])
    assert fsc(c1_few, c1)[:9].mean() < curve[:9].mean()


def test_tau2_from_fsc_follows_relion():
    f = torch.tensor([1.0, 0.5, 0.143, 0.0, -0.2], dtype=torch.float64)
    sigma2 = torch.full((5,), 2.0, dtype=torch.float64)
    half = tau2_from_fsc(f, sigma2)
    torch.testing.assert_close(half[1], torch.tensor(2.0, dtype=torch.float64))  # SSNR 1
    assert float(half[0]) == pytest.approx(0.999 / 0.001 * 2)
    assert float(half[3]) == pytest.approx(0.001 / 0.999 * 2)
    joined = tau2_from_fsc(f, sigma2, joined=True)
    # FSC_half = 0.143 ⇔ full-set SSNR ≈ 1 (the 0.143 criterion)
    assert float(joined[2]) == pytest.approx(2.0, rel=0.01)


def test_blob_transform_is_the_compact_kaiser_bessel_kernel():
    """Back in Fourier space the blob is RELION's kernel: unit sum, peak at 0, nothing beyond 3.8 voxels."""
    kernel = torch.fft.ifftn(blob_transform(64, 3)).real
    c = torch.fft.fftfreq(64, 1 / 64, dtype=torch.float64)
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.sqrt(x * x + y * y + z * z)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-9)
    assert int(kernel.argmax()) == 0
    assert float(kernel[r > 4.0].abs().max()) < 1e-3 * float(kernel.max())
    assert float(kernel[(r > 2.5) & (r < 3.5)].max()) > 1e-3 * float(kernel.max())


def test_iterative_gridding_inverts_the_weight(random_object):
    """RELION 3.1's 10 Pipe–Menon iterations give the object back at scale 1, like the plain division."""
    rots = random_rotations(3000, torch.Generator().manual_seed(1))
    slices = Projector.from_volume(random_object).project(rots)
    rec = Reconstructor(24)
    rec.insert(slices, torch.ones(slices.shape), rots)
    out = rec.reconstruct(gridding_iterations=10).double()
    assert fsc(out, random_object)[: int(0.9 * 12) + 1].min() > 0.99
    plain = round_trip(random_object, rots)
    assert float((out * plain).sum() / (plain**2).sum()) == pytest.approx(1.0, abs=0.02)
