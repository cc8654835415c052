"""Optics corrections Ember does not apply (beam tilt, Zernike terms, magnification matrix) are refused.
Fixtures: tests/data/realworld (make_fixtures.py there)."""

import pandas as pd
import pytest
import starfile

from ember.errors import EmberInputError
from ember.io.particles import ParticleDataSet
from ember.io.star import read_particles_star, write_particles_star

CORRECTIONS = ["rlnBeamTiltX", "rlnBeamTiltY", "rlnOddZernike", "rlnEvenZernike", "rlnMagMat00", "rlnMagMat01",
               "rlnMagMat10", "rlnMagMat11"]
TRIVIAL = {"rlnBeamTiltX": 0.0, "rlnBeamTiltY": 0.0, "rlnOddZernike": "[0.0,0.0,0.0,0.0,0.0,0.0]",
           "rlnEvenZernike": "[]", "rlnMagMat00": 1.0, "rlnMagMat01": 0.0, "rlnMagMat10": 0.0, "rlnMagMat11": 1.0}


def test_ctf_refine_corrections_refused_naming_the_columns(data):
    with pytest.raises(EmberInputError, match="remove the columns") as e:
        ParticleDataSet.from_star(data / "ctf_refined.star")
    assert all(c in str(e.value) for c in CORRECTIONS), str(e.value)
    assert "\n" not in str(e.value)
    star = data / "ctf_refined.star"
    t = read_particles_star(star)
    for name, value in TRIVIAL.items():  # zero tilt, zero or no Zernike terms, identity matrix: fine
        t.optics[name] = [value]
    write_particles_star(star, t)
    assert len(ParticleDataSet.from_star(star)) == 2
    t.optics["rlnMagMat01"] = [0.004]  # one shear term alone is refused, naming only it
    write_particles_star(star, t)
    with pytest.raises(EmberInputError, match="rlnMagMat01") as e:
        ParticleDataSet.from_star(star)
    assert "rlnBeamTilt" not in str(e.value)


def test_relion30_beam_tilt_per_particle_refused(data):
    df = pd.DataFrame({"rlnImageName": ["1@stack.mrcs", "2@stack.mrcs"], "rlnVoltage": [300.0] * 2,
                       "rlnSphericalAberration": [2.7] * 2, "rlnAmplitudeContrast": [0.1] * 2,
                       "rlnImagePixelSize": [2.0] * 2, "rlnDefocusU": [1e4] * 2, "rlnDefocusV": [1e4] * 2,
                       "rlnBeamTiltX": [0.0, 0.2], "rlnBeamTiltY": [0.0, 0.0]})
    starfile.write({"": df}, data / "old.star")
    with pytest.raises(EmberInputError, match=r"rlnBeamTiltX\b") as e:
        ParticleDataSet.from_star(data / "old.star")
    assert "rlnBeamTiltY" not in str(e.value)
