"""Tomography particles (RELION 4 subtomograms, RELION 5 2D tilt stacks) are refused: Ember is
single-particle only. Fixtures: tests/data/realworld (make_fixtures.py there)."""

import pytest
import starfile

from ember.errors import EmberInputError
from ember.io.particles import ParticleDataSet
from tests.io.realworld import DATA


@pytest.mark.parametrize("folder", ["relion4_subtomo", "relion5_tomo"])
def test_tomography_particles_refused(folder):
    with pytest.raises(EmberInputError, match=r"tomography particles \(rlnTomoName\).*single-particle") as e:
        ParticleDataSet.from_star(DATA / folder / "particles.star")
    assert "\n" not in str(e.value)


def test_3d_images_refused_without_tomography_columns(data):
    """The RELION 4 subtomogram STAR with the tomography columns removed: still 3D images."""
    star = data / "relion4_subtomo" / "particles.star"
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns=["rlnTomoName", "rlnTomoParticleName"])
    starfile.write(blocks, star, overwrite=True)
    with pytest.raises(EmberInputError, match=r"rlnImageDimensionality 3"):
        ParticleDataSet.from_star(star)
    blocks["optics"]["rlnImageDimensionality"] = 2  # a 2D-looking STAR naming a volume
    starfile.write(blocks, star, overwrite=True)
    with pytest.raises(EmberInputError, match=r"1_subtomo.mrc: .*3D \(8×8×8\)"):
        ParticleDataSet.from_star(star)
