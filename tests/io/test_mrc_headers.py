"""Stack and map headers other programs write: no "MAP " ID string, placeholder pixel sizes.
Fixtures: tests/data/realworld (make_fixtures.py there)."""

import logging

import mrcfile
import numpy as np
import pytest

from ember.errors import EmberInputError
from ember.io.mrc import open_stack, read_map
from ember.io.particles import ParticleDataSet, check_map_matches
from tests.io.realworld import DATA, stack_images, warnings_of


def test_stack_without_map_id_read_permissively_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        ds = ParticleDataSet.from_star(DATA / "no_map_id.star")
    np.testing.assert_array_equal(ds.images(np.arange(2)), stack_images())
    assert any("no_map_id.mrcs" in w and "Map ID" in w for w in warnings_of(caplog)), caplog.text
    # the same header with the data block cut short is still refused
    with pytest.raises(EmberInputError, match="no_map_id_truncated.mrcs"):
        ParticleDataSet.from_star(DATA / "no_map_id_truncated.star")
    with pytest.raises(EmberInputError, match="no_map_id_truncated.mrcs"):
        open_stack(DATA / "no_map_id_truncated.mrcs")


def test_map_without_map_id_read_permissively_with_warning(tmp_path, caplog):
    raw = bytearray((DATA / "map_apix0.mrc").read_bytes())
    raw[208:212] = b"\0\0\0\0"
    (tmp_path / "noid.mrc").write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        vol, _ = read_map(tmp_path / "noid.mrc")
    np.testing.assert_array_equal(vol, read_map(DATA / "map_apix0.mrc")[0])
    assert any("noid.mrc" in w for w in warnings_of(caplog))
    (tmp_path / "cut.mrc").write_bytes(raw[:2000])
    with pytest.raises(EmberInputError, match="cut.mrc"):
        read_map(tmp_path / "cut.mrc")


def test_placeholder_header_pixel_size_takes_the_stars(data, caplog):
    with caplog.at_level(logging.WARNING):
        ds = ParticleDataSet.from_star(data / "apix_placeholder.star")
    assert ds.pixel_size == 12.0
    assert any("apix_placeholder.mrcs" in w and "1.0000" in w and "12.0000" in w for w in warnings_of(caplog))
    caplog.clear()
    with mrcfile.open(data / "apix_placeholder.mrcs", mode="r+") as m:
        m.voxel_size = 0.0
    with caplog.at_level(logging.WARNING):
        assert ParticleDataSet.from_star(data / "apix_placeholder.star").pixel_size == 12.0
    assert any("0.0000" in w and "12.0000" in w for w in warnings_of(caplog))
    with mrcfile.open(data / "apix_placeholder.mrcs", mode="r+") as m:  # any other value: the STAR's too, as RELION
        m.voxel_size = 3.0
    assert ParticleDataSet.from_star(data / "apix_placeholder.star").pixel_size == 12.0


@pytest.mark.parametrize("header", [0.0, 1.0])
def test_reference_map_placeholder_pixel_size_accepted_with_warning(header, caplog):
    ds = ParticleDataSet.from_star(DATA / "relion31_pixel_offsets.star")  # 2 Å, box 16
    with caplog.at_level(logging.WARNING):
        check_map_matches("ref.mrc", 16, header, ds)
    assert any("ref.mrc" in w and f"{header:.4f}" in w and "2.0000" in w for w in warnings_of(caplog))
    with pytest.raises(EmberInputError, match="map pixel size 3.0000"):
        check_map_matches("ref.mrc", 16, 3.0, ds)
    with pytest.raises(EmberInputError, match="map box 18"):
        check_map_matches("ref.mrc", 18, header, ds)
