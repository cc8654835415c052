"""Expected angular/translational accuracy (ALGORITHM §6.4): the smallest pose error whose signal
change Σ|C(V̂(A) − V̂(A'))|²/(2σ²) exceeds −ln 0.01."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ember.inference.accuracy import expected_accuracy
from ember.inference.images import FrequencyWindow
from ember.io.mrc import write_map
from ember.io.particles import ParticleDataSet
from ember.jobs.simulate import SimulateConfig, simulate
from ember.operators.projector import Projector
from tests.conftest import blob_volume

N = 24
NEG_LN_001 = -math.log(0.01)  # 4.60517


def random_angles(m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, m)))
    return np.column_stack([rng.uniform(-180, 180, m), tilt, rng.uniform(-180, 180, m)])


def accuracy(projector, sigma2: float, window: int, *, dataset=None, use_ctf=False, m=12, box=N):
    dataset = dataset or SimpleNamespace(has_ctf=False, box=box)
    return expected_accuracy(
        projector,
        torch.full((box // 2 + 1,), sigma2, dtype=torch.float64),
        dataset,
        np.arange(m),
        random_angles(m),
        FrequencyWindow.build(box, window),
        np.random.default_rng(1),
        use_ctf=use_ctf,
    )


@pytest.fixture(scope="module")
def blob_projector():
    return Projector.from_volume(blob_volume(N))


def test_less_noise_gives_smaller_errors_scaling_as_sigma(blob_projector):
    """Power ∝ ε²/σ² for small pose errors ε, so dividing σ² by 10 divides the errors by ≈ √10."""
    rot_hi, trans_hi = accuracy(blob_projector, 1e-3, 6)
    rot_lo, trans_lo = accuracy(blob_projector, 1e-4, 6)
    assert rot_lo < rot_hi and trans_lo < trans_hi
    assert 2.5 < rot_hi / rot_lo < 4.0
    assert 2.5 < trans_hi / trans_lo < 4.0


def test_larger_window_gives_smaller_errors(blob_projector):
    """More (higher-resolution) frequencies only add signal power."""
    rot_small, trans_small = accuracy(blob_projector, 1e-3, 6)
    rot_big, trans_big = accuracy(blob_projector, 1e-3, 12)
    assert rot_big < rot_small and trans_big < trans_small


def test_spherical_object_has_no_angular_signal(blob_projector):
    """A centred sphere looks the same from every direction: the angular error hits the 30° cap,
    while an asymmetric object of similar size is well below it."""
    sphere = Projector.from_volume(blob_volume(N, blobs=((0.0, 0.0, 0.0, 8.0, 1.0),)))
    rot_sphere, trans_sphere = accuracy(sphere, 1e-3, 12)
    assert rot_sphere == 30.0
    assert trans_sphere < 10.0
    assert accuracy(blob_projector, 1e-3, 12)[0] < 15.0


@pytest.mark.parametrize("margin,expected", [(1.02, 1.0), (0.98, 1.2)])
def test_translation_error_hand_calculation(margin, expected):
    """A delta at the centre projects to a flat spectrum A = 1/N² for every rotation. Window W = 2
    keeps shells ≤ 1 without DC: (1,0), (0,1), (1,1), (1,−1). A shift t along x (or y) changes
    three of them by |1 − e^{−2πit/N}|² = 2 − 2cos(2πt/N), so the power is
    P(t) = A²/(2σ²) · 6(1 − cos(2πt/N)). With σ² such that P(1 px) = margin·4.60517, the error is
    1 px (margin > 1) or the next grid step 1.2 px (margin < 1, as P(1.2) ≈ 1.44·P(1))."""
    box = 32
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    vol[box // 2, box // 2, box // 2] = 1.0
    delta = Projector.from_volume(vol)
    a2 = (1 / box**2) ** 2
    s1 = 6 * (1 - math.cos(2 * math.pi / box))
    sigma2 = a2 * s1 / (2 * margin * NEG_LN_001)
    rot, trans = accuracy(delta, sigma2, 2, box=box)
    assert trans == pytest.approx(expected)
    assert rot == 30.0  # no angular signal in a delta


def test_ctf_lowers_the_signal(tmp_path, blob_projector):
    """|C| ≤ 1: with the particles' CTFs the same pose error carries less power → larger errors."""
    write_map(tmp_path / "blob.mrc", blob_volume(N).numpy(), 2.0)
    star = simulate(SimulateConfig(output=tmp_path / "s", n_particles=12, map_path=tmp_path / "blob.mrc",
                                   defocus_min_um=0.8, defocus_max_um=1.5, seed=2))
    ds = ParticleDataSet.from_star(star)
    rot_ctf, trans_ctf = accuracy(blob_projector, 1e-3, 12, dataset=ds, use_ctf=True)
    rot, trans = accuracy(blob_projector, 1e-3, 12, dataset=ds, use_ctf=False)
    assert rot_ctf > rot and trans_ctf > trans


def test_angle_perturbed_is_one_of_rot_tilt_psi_at_random():
    """Two blobs on the z axis viewed down z (tilt 0): perturbing rot or psi only spins the image
    about its centre (no signal, 30° cap); perturbing tilt separates the blobs (small error).
    The mean over particles lies between, near (2·30° + small)/3."""
    pencil = Projector.from_volume(blob_volume(N, blobs=((0.0, 0.0, 5.0, 4.0, 1.0), (0.0, 0.0, -5.0, 4.0, 0.7))))
    m = 30
    angles = np.zeros((m, 3))
    rot, _ = expected_accuracy(pencil, torch.full((N // 2 + 1,), 1e-4, dtype=torch.float64),
                               SimpleNamespace(has_ctf=False, box=N), np.arange(m), angles,
                               FrequencyWindow.build(N, 12), np.random.default_rng(3), use_ctf=False)
    assert 12.0 < rot < 27.0
