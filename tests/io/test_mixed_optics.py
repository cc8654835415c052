"""Optics groups with different pixel or box sizes: refused by default (refine3d), read per group
with `mixed_sizes=True` (ember reconstruct)."""

import numpy as np
import pandas as pd
import pytest
import torch

from ember.errors import EmberInputError
from ember.io.mrc import write_map
from ember.io.particles import ParticleDataSet
from ember.io.star import ParticleTable, write_particles_star
from ember.operators.ctf import CtfOptics, ctf_2d, particle_ctfs

# group 1: 2.5 Å, box 16; group 2: 2.0 Å, box `box2` (200 kV). Particles alternate 1, 2, 1, 2, ...
N = 6


def make_mixed(tmp_path, *, box2=16, stack2_box=None):
    rng = np.random.default_rng(3)
    b2 = stack2_box or box2
    stacks = {1: rng.normal(size=(N // 2, 16, 16)), 2: rng.normal(size=(N // 2, b2, b2))}
    for g, pixel in ((1, 2.5), (2, 2.0)):
        write_map(tmp_path / f"g{g}.mrcs", stacks[g].astype(np.float32), pixel)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [2, 1],
            "rlnOpticsGroupName": ["fine", "coarse"],
            "rlnVoltage": [200.0, 300.0],
            "rlnSphericalAberration": [2.0, 2.7],
            "rlnAmplitudeContrast": [0.07, 0.1],
            "rlnImagePixelSize": [2.0, 2.5],
            "rlnImageSize": [box2, 16],
            "rlnImageDimensionality": [2, 2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i // 2 + 1:06d}@g{1 + i % 2}.mrcs" for i in range(N)],
            "rlnOpticsGroup": [1, 2] * (N // 2),
            "rlnOriginXAngst": [5.0] * N,
            "rlnOriginYAngst": [-10.0] * N,
            "rlnOriginXPriorAngst": [10.0] * N,
            "rlnDefocusU": np.linspace(12000, 22000, N),
            "rlnDefocusV": np.linspace(11000, 21000, N),
            "rlnDefocusAngle": np.linspace(-60, 60, N),
        }
    )
    write_particles_star(tmp_path / "p.star", ParticleTable(optics, particles))
    return tmp_path / "p.star", stacks


def test_refused_by_default_in_one_line_naming_the_fix(tmp_path):
    star, _ = make_mixed(tmp_path)
    with pytest.raises(EmberInputError, match="rescale_angpix") as err:
        ParticleDataSet.from_star(star)
    text = str(err.value)
    assert "group 1: 2.5 Å" in text and "group 2: 2 Å" in text and "refine3d" in text and "\n" not in text


def test_model_is_the_first_group_and_offsets_use_each_groups_pixel(tmp_path):
    star, _ = make_mixed(tmp_path)
    ds = ParticleDataSet.from_star(star, mixed_sizes=True)
    assert (ds.pixel_size, ds.box) == (2.5, 16) and not ds.uniform_sizes
    assert [(o.number, o.pixel_size) for o in ds.optics_groups] == [(1, 2.5), (2, 2.0)]
    np.testing.assert_array_equal(ds.pixel_sizes(), [2.5, 2.0] * 3)
    np.testing.assert_allclose(ds.offsets_px(), [[2.0, -4.0], [2.5, -5.0]] * 3)
    np.testing.assert_allclose(ds.prior_offsets_px()[:, 0], [4.0, 5.0] * 3)


def test_ctfs_with_each_groups_pixel_size(tmp_path):
    star, _ = make_mixed(tmp_path)
    ds = ParticleDataSet.from_star(star, mixed_sizes=True)
    got = particle_ctfs(ds, np.arange(N), dtype=torch.float64)
    for i in range(N):
        g = ds.optics_groups[i % 2]
        want = ctf_2d(
            16,
            g.pixel_size,
            optics=CtfOptics(g.voltage_kv, g.cs_mm, g.amplitude_contrast),
            dtype=torch.float64,
            defocus_u_angstrom=torch.tensor([ds.column("rlnDefocusU")[i]]),
            defocus_v_angstrom=torch.tensor([ds.column("rlnDefocusV")[i]]),
            defocus_angle_deg=torch.tensor([ds.column("rlnDefocusAngle")[i]]),
        )[0]
        torch.testing.assert_close(got[i], want)


def test_different_boxes_read_per_group(tmp_path):
    star, stacks = make_mixed(tmp_path, box2=20)
    ds = ParticleDataSet.from_star(star, mixed_sizes=True)
    np.testing.assert_allclose(ds.images(np.array([1, 3])), stacks[2][:2].astype(np.float32))
    assert particle_ctfs(ds, np.array([1, 3])).shape == (2, 20, 11)
    with pytest.raises(ValueError, match="different boxes"):
        ds.images(np.arange(N))


def test_stack_box_checked_against_its_own_group(tmp_path):
    star, _ = make_mixed(tmp_path, box2=20, stack2_box=16)
    with pytest.raises(EmberInputError, match=r"g2.mrcs.*16×16 px but the optics group says 20 \(rlnOpticsGroup 2\)"):
        ParticleDataSet.from_star(star, mixed_sizes=True)
