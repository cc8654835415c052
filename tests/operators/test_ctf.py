import math

import numpy as np
import pytest
import torch

from ember.errors import EmberInputError
from ember.io.particles import ParticleDataSet
from ember.operators.ctf import CtfOptics, ctf_2d, ctf_from_frequencies, electron_wavelength_angstrom, particle_ctfs
from tests.io.test_particles import make_two_groups

OPTICS = CtfOptics(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)


def radial_ctf(s, **kw):
    """CTF along +x at spatial frequencies s (Å⁻¹), ALGORITHM §3.2 fixture parameters."""
    pts = torch.stack([torch.as_tensor(s, dtype=torch.float64), torch.zeros(len(s), dtype=torch.float64)], -1)
    params = dict(defocus_u_angstrom=20000.0, defocus_v_angstrom=20000.0, defocus_angle_deg=0.0)
    params.update(kw)
    return ctf_from_frequencies(pts, optics=OPTICS, **params)[0]


def test_wavelengths():
    assert electron_wavelength_angstrom(300) == pytest.approx(0.0196876, abs=1e-7)
    assert electron_wavelength_angstrom(200) == pytest.approx(0.0250795, abs=1e-7)


def test_relion_hand_values():
    """ALGORITHM §3.2 hand-check fixture (RELION CTF::getCTF)."""
    s = [0.0, 0.02, 0.03, 0.04, 0.05, 0.1]
    expected = [0.1, 0.560442, 0.936746, 0.873837, -0.049056, -0.128121]
    torch.testing.assert_close(radial_ctf(s), torch.tensor(expected, dtype=torch.float64), atol=2e-6, rtol=0)


def test_first_zero_where_formula_predicts():
    s = torch.linspace(0.045, 0.055, 10001, dtype=torch.float64)
    c = radial_ctf(s)
    crossing = s[torch.nonzero(c[:-1] * c[1:] < 0)[0, 0]]
    assert float(crossing) == pytest.approx(0.0496012, abs=2e-6)


def test_bfactor_envelope():
    s = [0.02, 0.1]
    ratio = radial_ctf(s, bfactor_a2=100.0) / radial_ctf(s)
    torch.testing.assert_close(ratio, torch.exp(-25 * torch.tensor(s, dtype=torch.float64) ** 2))


def test_astigmatism_direction():
    """Defocus U acts along the astigmatism angle, V perpendicular to it."""
    angle = 30.0
    u = torch.tensor([math.cos(math.radians(angle)), math.sin(math.radians(angle))], dtype=torch.float64)
    v = torch.tensor([-u[1], u[0]])
    s = 0.07
    params = dict(defocus_u_angstrom=15000.0, defocus_v_angstrom=25000.0, defocus_angle_deg=angle)
    along_u = ctf_from_frequencies((s * u)[None], optics=OPTICS, **params)[0]
    along_v = ctf_from_frequencies((s * v)[None], optics=OPTICS, **params)[0]
    torch.testing.assert_close(along_u[0], radial_ctf([s], defocus_u_angstrom=15000.0, defocus_v_angstrom=15000.0)[0])
    torch.testing.assert_close(along_v[0], radial_ctf([s], defocus_u_angstrom=25000.0, defocus_v_angstrom=25000.0)[0])


def test_phase_shift_90_degrees_turns_sine_into_cosine():
    c = radial_ctf([0.0], phase_shift_deg=90.0)
    k3 = math.atan(0.1 / math.sqrt(1 - 0.01))
    assert float(c[0]) == pytest.approx(math.sin(math.pi / 2 + k3))


def test_grid_shape_batch_and_clamp():
    c = ctf_2d(
        32,
        2.0,
        optics=OPTICS,
        defocus_u_angstrom=torch.tensor([1e4, 2e4]),
        defocus_v_angstrom=torch.tensor([1e4, 2e4]),
        defocus_angle_deg=torch.zeros(2),
    )
    assert c.shape == (2, 32, 17)
    assert float(c[0, 0, 0]) == pytest.approx(0.1, abs=1e-6)
    assert c.abs().min() >= 1e-8


def test_per_particle_optics_tensors_match_one_group_at_a_time():
    du = torch.tensor([1.2e4, 2.5e4, 1.8e4], dtype=torch.float64)
    groups = [CtfOptics(300.0, 2.7, 0.1), CtfOptics(200.0, 2.0, 0.07), CtfOptics(120.0, 0.01, 0.2)]
    mixed = CtfOptics(
        *(
            torch.tensor([getattr(o, f) for o in groups], dtype=torch.float64)
            for f in ("voltage_kv", "cs_mm", "amplitude_contrast")
        )
    )
    params = dict(defocus_u_angstrom=du, defocus_v_angstrom=du - 500, defocus_angle_deg=torch.tensor([0.0, 30.0, 70.0]))
    both = ctf_2d(24, 1.5, optics=mixed, dtype=torch.float64, **params)
    for b, o in enumerate(groups):
        one = ctf_2d(24, 1.5, optics=o, dtype=torch.float64, **{k: v[b : b + 1] for k, v in params.items()})
        torch.testing.assert_close(both[b], one[0], rtol=0, atol=1e-12)


def test_particle_ctfs_use_each_particles_optics_group(tmp_path):
    """Particle 0 is in group 1 (300 kV, Cs 2.7, Q0 0.1), particle 1 in group 2 (200 kV, 2.0, 0.07)."""
    ds = ParticleDataSet.from_star(make_two_groups(tmp_path))
    got = particle_ctfs(ds, np.array([0, 1]), dtype=torch.float64)
    u, v, a = (ds.column(c) for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"))

    def expected(i, optics):
        return ctf_2d(
            16,
            2.0,
            optics=optics,
            dtype=torch.float64,
            defocus_u_angstrom=u[i],
            defocus_v_angstrom=v[i],
            defocus_angle_deg=a[i],
        )[0]

    high, low = CtfOptics(300.0, 2.7, 0.1), CtfOptics(200.0, 2.0, 0.07)
    torch.testing.assert_close(got[0], expected(0, high), rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], expected(1, low), rtol=0, atol=1e-12)
    assert (got[0] - expected(0, low)).abs().max() > 0.5
    assert (got[1] - expected(1, high)).abs().max() > 0.5


def test_particle_ctfs_refuse_particles_without_ctf(tmp_path):
    ds = ParticleDataSet.from_star(make_two_groups(tmp_path, ctf=False))
    with pytest.raises(EmberInputError, match="rlnDefocusU"):
        particle_ctfs(ds, np.array([0]))
