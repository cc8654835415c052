import numpy as np
import pandas as pd
import pytest

from ember.errors import EmberInputError
from ember.io.mrc import write_map
from ember.io.particles import ParticleDataSet
from ember.io.star import ParticleTable, write_particles_star


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
        ({"header_pixel": 3.0}, "pixel size"),
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
