import numpy as np
import pandas as pd
import pytest
import starfile

from ember.errors import EmberInputError
from ember.io.mrc import write_map
from ember.io.particles import ParticleDataSet
from ember.io.star import ParticleTable, read_particles_star, write_particles_star


def make_set(tmp_path, *, n=6, box=16, star_box=None, pixel=2.0, header_pixel=None, nan_at=None, drop=None):
    stack = np.random.default_rng(1).normal(size=(n, box, box)).astype(np.float32)
    if nan_at is not None:
        stack[nan_at, 3, 3] = np.nan
    write_map(tmp_path / "parts.mrcs", stack, header_pixel or pixel)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["g"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [pixel],
            "rlnImageSize": [star_box or box],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@parts.mrcs" for i in range(n)][::-1],
            "rlnOpticsGroup": [1] * n,
            "rlnOriginXAngst": np.arange(n) * 2.0,
        }
    )
    if drop:
        particles = particles.drop(columns=[drop])
    write_particles_star(tmp_path / "p.star", ParticleTable(optics, particles))
    return tmp_path / "p.star", stack


def test_reads_images_in_star_order_and_offsets_in_pixels(tmp_path):
    star, stack = make_set(tmp_path)
    ds = ParticleDataSet.from_star(star)
    assert (len(ds), ds.box, ds.pixel_size) == (6, 16, 2.0)
    np.testing.assert_array_equal(ds.images(np.array([0, 5])), stack[[5, 0]])
    np.testing.assert_allclose(ds.offsets_px()[:, 0], np.arange(6) * 1.0)
    assert not ds.has_ctf


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"star_box": 18}, "optics group says 18"),
        ({"drop": "rlnImageName"}, "rlnImageName"),
        ({"box": 15}, "odd"),
    ],
)
def test_bad_data_sets_name_the_problem(tmp_path, kwargs, match):
    star, _ = make_set(tmp_path, **kwargs)
    with pytest.raises(EmberInputError, match=match):
        ParticleDataSet.from_star(star)


def test_nan_pixels_name_the_stack_and_particle(tmp_path):
    star, _ = make_set(tmp_path, nan_at=2)
    ds = ParticleDataSet.from_star(star)
    with pytest.raises(EmberInputError, match=r"parts.mrcs.*particle 3 .*NaN"):
        ds.images(np.arange(6))


def test_missing_stack(tmp_path):
    star, _ = make_set(tmp_path)
    (tmp_path / "parts.mrcs").unlink()
    with pytest.raises(EmberInputError, match="not found"):
        ParticleDataSet.from_star(star)


# Two optics groups, listed out of order in data_optics: group 2 (200 kV, Cs 2.0, Q0 0.07,
# CTF-premultiplied) and group 1 (300 kV, Cs 2.7, Q0 0.1). Particles alternate 1, 2, 1, 2, ...
GROUP_OPTICS = {
    "rlnOpticsGroup": [2, 1],
    "rlnOpticsGroupName": ["low", "high"],
    "rlnVoltage": [200.0, 300.0],
    "rlnSphericalAberration": [2.0, 2.7],
    "rlnAmplitudeContrast": [0.07, 0.1],
    "rlnImagePixelSize": [2.0, 2.0],
    "rlnImageSize": [16, 16],
    "rlnImageDimensionality": [2, 2],
    "rlnCtfDataAreCtfPremultiplied": [1, 0],
}


def make_two_groups(tmp_path, *, n=6, ctf=True, drop_optics=None, extra=None):
    """STAR + stack with two optics groups (GROUP_OPTICS); `extra` adds particle columns."""
    write_map(tmp_path / "parts.mrcs", np.zeros((n, 16, 16), np.float32), 2.0)
    optics = pd.DataFrame(GROUP_OPTICS)
    if drop_optics:
        optics = optics.drop(columns=[drop_optics])
    particles = pd.DataFrame(
        {"rlnImageName": [f"{i + 1:06d}@parts.mrcs" for i in range(n)], "rlnOpticsGroup": [1, 2] * (n // 2)}
    )
    if ctf:
        particles["rlnDefocusU"] = np.linspace(12000, 22000, n)
        particles["rlnDefocusV"] = particles["rlnDefocusU"] - 300
        particles["rlnDefocusAngle"] = np.linspace(-60, 60, n)
    for name, values in (extra or {}).items():
        particles[name] = values
    write_particles_star(tmp_path / "p.star", ParticleTable(optics, particles))
    return tmp_path / "p.star"


def test_optics_groups_in_group_order_with_per_particle_index(tmp_path):
    ds = ParticleDataSet.from_star(make_two_groups(tmp_path))
    assert ds.n_optics_groups == 2
    assert [o.number for o in ds.optics_groups] == [1, 2]
    assert [(o.voltage_kv, o.cs_mm, o.amplitude_contrast) for o in ds.optics_groups] == [
        (300.0, 2.7, 0.1),
        (200.0, 2.0, 0.07),
    ]
    np.testing.assert_array_equal(ds.optics_group_index(), [0, 1, 0, 1, 0, 1])
    assert ds.optics == ds.optics_groups[0]  # the old single-group name still works
    assert (ds.pixel_size, ds.box) == (2.0, 16)


def test_ctf_premultiplied_per_group(tmp_path):
    ds = ParticleDataSet.from_star(make_two_groups(tmp_path))
    assert [o.ctf_premultiplied for o in ds.optics_groups] == [False, True]
    np.testing.assert_array_equal(ds.ctf_premultiplied(), [False, True] * 3)


def test_only_used_optics_groups_count(tmp_path):
    star = make_two_groups(tmp_path)
    t = read_particles_star(star)
    t.particles["rlnOpticsGroup"] = 2
    write_particles_star(star, t)
    ds = ParticleDataSet.from_star(star)
    assert ds.n_optics_groups == 1 and ds.optics.voltage_kv == 200.0
    np.testing.assert_array_equal(ds.optics_group_index(), np.zeros(6))
    assert ds.ctf_premultiplied().all()


@pytest.mark.parametrize("column", ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"])
def test_missing_ctf_constant_refused_when_particles_have_ctf(tmp_path, column):
    with pytest.raises(EmberInputError, match=f"no {column} "):
        ParticleDataSet.from_star(make_two_groups(tmp_path, drop_optics=column))


def test_impossible_ctf_constants_refused(tmp_path):
    star = make_two_groups(tmp_path)
    t = read_particles_star(star)
    t.optics.loc[1, "rlnAmplitudeContrast"] = 1.0
    write_particles_star(star, t)
    with pytest.raises(EmberInputError, match="optics group 1: .*out of range"):
        ParticleDataSet.from_star(star)


def test_missing_ctf_constants_fine_without_ctf_columns(tmp_path):
    ds = ParticleDataSet.from_star(make_two_groups(tmp_path, ctf=False, drop_optics="rlnVoltage"))
    assert not ds.has_ctf
    assert np.isnan(ds.optics.voltage_kv)  # not given, and not invented


def test_priors_999_and_missing_columns_are_nan(tmp_path):
    extra = {
        "rlnAngleTiltPrior": [90.0, 999.0, 80.0, 90.0, 999.0, 10.0],
        "rlnAnglePsiPrior": [999.0, 45.0, -30.0, 0.0, 1.0, 2.0],
        "rlnOriginXPriorAngst": [4.0, 999.0, -2.0, 0.0, 0.0, 0.0],
        "rlnOriginYPriorAngst": [1.0, 2.0, 3.0, 999.0, 0.0, 0.0],
    }
    ds = ParticleDataSet.from_star(make_two_groups(tmp_path, extra=extra))
    angles = ds.prior_angles_deg()
    assert angles.shape == (6, 3)
    assert np.isnan(angles[:, 0]).all()  # no rlnAngleRotPrior column
    np.testing.assert_array_equal(angles[:, 1], [90.0, np.nan, 80.0, 90.0, np.nan, 10.0])
    np.testing.assert_array_equal(angles[:, 2], [np.nan, 45.0, -30.0, 0.0, 1.0, 2.0])
    offsets = ds.prior_offsets_px()  # Å → px at 2 Å/px
    np.testing.assert_array_equal(offsets[:4], [[2.0, 0.5], [np.nan, 1.0], [-1.0, 1.5], [0.0, np.nan]])


def test_no_prior_columns_give_none(tmp_path):
    ds = ParticleDataSet.from_star(make_two_groups(tmp_path))
    assert ds.prior_angles_deg() is None and ds.prior_offsets_px() is None


def test_group_numbers(tmp_path):
    ds = ParticleDataSet.from_star(make_two_groups(tmp_path))
    np.testing.assert_array_equal(ds.group_numbers(), np.ones(6))
    ds = ParticleDataSet.from_star(make_two_groups(tmp_path, extra={"rlnGroupNumber": [3, 1, 2, 3, 1, 2]}))
    assert ds.group_numbers().dtype == np.int64
    np.testing.assert_array_equal(ds.group_numbers(), [3, 1, 2, 3, 1, 2])


def test_relion_30_star_gives_one_optics_group_per_microscope(tmp_path):
    write_map(tmp_path / "parts.mrcs", np.zeros((3, 16, 16), np.float32), 2.0)
    df = pd.DataFrame(
        {
            "rlnImageName": ["1@parts.mrcs", "2@parts.mrcs", "3@parts.mrcs"],
            "rlnVoltage": [200.0, 300.0, 200.0],
            "rlnSphericalAberration": [2.0, 2.7, 2.0],
            "rlnAmplitudeContrast": [0.1, 0.1, 0.1],
            "rlnImagePixelSize": [2.0] * 3,
            "rlnDefocusU": [1e4] * 3,
            "rlnDefocusV": [1e4] * 3,
        }
    )
    starfile.write({"": df}, tmp_path / "old.star")
    ds = ParticleDataSet.from_star(tmp_path / "old.star")
    voltages = np.array([o.voltage_kv for o in ds.optics_groups])[ds.optics_group_index()]
    np.testing.assert_array_equal(voltages, [200.0, 300.0, 200.0])
