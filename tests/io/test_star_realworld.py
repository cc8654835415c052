"""STAR-level real-world cases: RELION 3.1 pixel offsets, one-line parse errors, cryoSPARC .cs files.
Fixtures: tests/data/realworld (make_fixtures.py there)."""

import logging
import shutil

import pytest

from ember.errors import EmberInputError
from ember.io.particles import ParticleDataSet
from ember.io.star import read_particles_star
from tests.io.realworld import DATA, warnings_of


def test_relion31_pixel_offsets_warned(caplog):
    with caplog.at_level(logging.WARNING):
        t = read_particles_star(DATA / "relion31_pixel_offsets.star")
    assert "rlnOriginXAngst" not in t.particles  # as RELION 3.1: not read, but said
    assert any("rlnOriginX" in w and "rlnOriginY" in w and "Å" in w for w in warnings_of(caplog)), caplog.text


def test_star_parse_error_is_one_line():
    with pytest.raises(EmberInputError, match="malformed.star") as e:
        read_particles_star(DATA / "malformed.star")
    assert "\n" not in str(e.value), repr(str(e.value))


def test_cryosparc_file_refused_naming_the_converter(tmp_path):
    with pytest.raises(EmberInputError, match=r"cryosparc_particles.cs: .*cryoSPARC.*csparc2star.py"):
        read_particles_star(DATA / "cryosparc_particles.cs")
    shutil.copy(DATA / "cryosparc_particles.cs", tmp_path / "particles.star")  # recognised by content too
    with pytest.raises(EmberInputError, match=r"cryoSPARC"):
        ParticleDataSet.from_star(tmp_path / "particles.star")
