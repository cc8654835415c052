import numpy as np
import pandas as pd
import pytest
import starfile

from ember.errors import EmberInputError
from ember.io.particles import parse_image_name
from ember.io.star import ParticleTable, read_particles_star, write_particles_star


def table31() -> ParticleTable:
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnOpticsGroupName": ["g1", "g2"],
            "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnSphericalAberration": [2.7, 2.7],
            "rlnVoltage": [300.0, 300.0],
            "rlnImagePixelSize": [1.5, 1.5],
            "rlnImageSize": [64, 64],
            "rlnImageDimensionality": [2, 2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": ["000001@a.mrcs", "000002@a.mrcs"],
            "rlnOpticsGroup": [1, 2],
            "rlnDefocusU": [10000.0, 12000.0],
            "rlnAngleRot": [10.0, 20.0],
            "rlnOriginXAngst": [1.5, -3.0],
            "rlnMyOwnColumn": ["x y", "z"],
            "rlnHelicalTubeID": [3, 4],
        }
    )
    return ParticleTable(optics, particles)


def test_31_round_trip_keeps_every_column(tmp_path):
    t = table31()
    write_particles_star(tmp_path / "p.star", t)
    back = read_particles_star(tmp_path / "p.star")
    assert list(back.particles.columns) == list(t.particles.columns)
    assert list(back.optics.columns) == list(t.optics.columns)
    assert back.particles["rlnMyOwnColumn"].tolist() == ["x y", "z"]
    np.testing.assert_allclose(back.particles["rlnOriginXAngst"], [1.5, -3.0])


def test_relion_30_is_converted_to_optics_groups(tmp_path):
    df = pd.DataFrame(
        {
            "rlnImageName": ["1@a.mrcs", "2@a.mrcs", "3@b.mrcs"],
            "rlnVoltage": [300.0, 300.0, 200.0],
            "rlnSphericalAberration": [2.7, 2.7, 2.0],
            "rlnAmplitudeContrast": [0.1, 0.1, 0.1],
            "rlnMagnification": [10000.0] * 3,
            "rlnDetectorPixelSize": [5.0, 5.0, 5.0],
            "rlnOriginX": [2.0, -1.0, 0.0],
            "rlnOriginY": [0.0, 1.0, 4.0],
            "rlnDefocusU": [1e4] * 3,
        }
    )
    starfile.write({"": df}, tmp_path / "old.star")
    t = read_particles_star(tmp_path / "old.star")
    assert len(t.optics) == 2
    assert t.optics["rlnImagePixelSize"].tolist() == [5.0, 5.0]
    assert t.particles["rlnOpticsGroup"].tolist() == [1, 1, 2]
    np.testing.assert_allclose(t.particles["rlnOriginXAngst"], [10.0, -5.0, 0.0])  # px × 5 Å
    assert "rlnOriginX" not in t.particles and "rlnVoltage" not in t.particles


def test_empty_and_garbage_star_are_clear_errors(tmp_path):
    t = table31()
    t.particles = t.particles.iloc[:0]
    write_particles_star(tmp_path / "empty.star", t)
    with pytest.raises(EmberInputError, match="empty"):
        read_particles_star(tmp_path / "empty.star")
    (tmp_path / "missing.star").unlink(missing_ok=True)
    with pytest.raises(EmberInputError, match="not found"):
        read_particles_star(tmp_path / "missing.star")


def test_parse_image_name():
    assert parse_image_name("000123@Particles/mic_001.mrcs") == (122, "Particles/mic_001.mrcs")
    assert parse_image_name("single.mrc") == (0, "single.mrc")
