"""2D references (class averages): the projector rotates a 2D image in plane, the reconstructor
averages images inserted at in-plane rotations (issue 7: operators shared by 2D classification)."""

import torch

from ember.maths.fourier import fft2_centered
from ember.maths.rotations import euler_to_matrix
from ember.operators.projector import Projector
from ember.operators.reconstructor import Reconstructor, half_set_fsc
from tests.conftest import blob_volume


def _image(n: int = 32) -> torch.Tensor:
    """An asymmetric, smooth (N, N) image: the z-sum of the test blobs."""
    return blob_volume(n).sum(dim=0)


def _in_plane(psi_deg: torch.Tensor) -> torch.Tensor:
    return euler_to_matrix(torch.stack([torch.zeros_like(psi_deg), torch.zeros_like(psi_deg), psi_deg], 1))


def test_2d_projection_is_the_rotated_image_transform():
    """psi = 0 gives the image's transform; psi = 90° the transform of the image turned by a quarter
    (about the centre pixel N/2) and not the unturned one (bilinear interpolation, low shells)."""
    img = _image()
    proj = Projector.from_image(img, dtype=torch.complex128)
    k = torch.stack(torch.meshgrid(torch.fft.fftfreq(32) * 32, torch.arange(17.0), indexing="ij"), -1)
    low = torch.linalg.vector_norm(k, dim=-1) < 10

    def err(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b)[low].abs().max() / b.abs().max())

    ref = fft2_centered(img)
    assert err(proj.project(_in_plane(torch.zeros(1, dtype=torch.float64)))[0], ref) < 0.03
    quarter = proj.project(_in_plane(torch.tensor([90.0], dtype=torch.float64)))[0]
    turned = [fft2_centered(torch.roll(torch.rot90(img, 1, dims=(0, 1)), shifts=s, dims=(0, 1)))
              for s in ((0, 0), (1, 0), (0, 1), (1, 1))]  # A = Rz(90°): I′(x, y) = I(−y, x)
    assert min(err(quarter, t) for t in turned) < 0.03 < err(quarter, ref)


def test_2d_average_of_rotated_copies_recovers_the_image():
    """Sections of one image at 60 in-plane rotations, inserted back: the reconstruction is the image."""
    img = _image()
    proj = Projector.from_image(img, dtype=torch.complex128)
    psi = torch.linspace(0, 360, 61, dtype=torch.float64)[:-1]
    rot = _in_plane(psi)
    sections = proj.project(rot)
    halves = []
    for sel in (slice(0, None, 2), slice(1, None, 2)):
        rec = Reconstructor(32, ndim=2)
        rec.insert(sections[sel], torch.ones(sections[sel].shape, dtype=torch.float64), rot[sel])
        rec.prepare()
        halves.append(rec)
    out = halves[0].reconstruct().double()
    assert out.shape == (32, 32)
    inside = torch.linalg.vector_norm(torch.stack(torch.meshgrid(torch.arange(32.0) - 16, torch.arange(32.0) - 16,
                                                                 indexing="ij")), dim=0) < 12
    assert float((out - img)[inside].norm() / img[inside].norm()) < 0.04  # gridding error: a -0.4 % offset
    frc = half_set_fsc(*halves)
    assert frc[1:12].min() > 0.99


def test_2d_iterative_gridding_recovers_the_image():
    """RELION 3.1's iterative gridding on a 2D average (the in-plane grid of class2d): the image again."""
    img = _image()
    psi = torch.linspace(0, 360, 61, dtype=torch.float64)[:-1]
    rot = _in_plane(psi)
    sections = Projector.from_image(img, dtype=torch.complex128).project(rot)
    rec = Reconstructor(32, ndim=2)
    rec.insert(sections, torch.ones(sections.shape, dtype=torch.float64), rot)
    out = rec.reconstruct(gridding_iterations=10).double()
    c = torch.arange(32.0) - 16
    inside = torch.linalg.vector_norm(torch.stack(torch.meshgrid(c, c, indexing="ij")), dim=0) < 12
    assert float((out - img)[inside].norm() / img[inside].norm()) < 0.04
