import mrcfile
import numpy as np
import pytest

from ember.errors import EmberInputError
from ember.io.mrc import StackWriter, open_stack, read_map, write_map


def test_map_round_trip_keeps_data_and_pixel_size(tmp_path):
    vol = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    write_map(tmp_path / "m.mrc", vol, 1.23)
    back, pixel = read_map(tmp_path / "m.mrc")
    np.testing.assert_array_equal(back, vol)
    assert pixel == pytest.approx(1.23, abs=1e-5)
    assert list(tmp_path.iterdir()) == [tmp_path / "m.mrc"]  # no temporary left behind


def test_stack_writer_is_atomic(tmp_path):
    w = StackWriter(tmp_path / "s.mrcs", 4, 8, 2.0)
    w.write(0, np.ones((4, 8, 8), np.float32))
    assert not (tmp_path / "s.mrcs").exists()  # nothing visible before close
    w.close()
    with open_stack(tmp_path / "s.mrcs") as m:
        assert m.data.shape == (4, 8, 8) and m.is_image_stack()
    w2 = StackWriter(tmp_path / "t.mrcs", 4, 8, 2.0)
    w2.close(ok=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mrcs"]


def test_truncated_mrc_is_clear_error(tmp_path):
    write_map(tmp_path / "m.mrc", np.zeros((16, 16, 16), np.float32), 1.0)
    raw = (tmp_path / "m.mrc").read_bytes()
    (tmp_path / "bad.mrc").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(EmberInputError, match="bad.mrc.*truncated"):
        read_map(tmp_path / "bad.mrc")
    with pytest.raises(EmberInputError, match="bad.mrc"):
        open_stack(tmp_path / "bad.mrc")


def test_odd_box_nan_and_missing_are_clear_errors(tmp_path):
    with mrcfile.new(tmp_path / "odd.mrc") as m:
        m.set_data(np.zeros((15, 15, 15), np.float32))
    with pytest.raises(EmberInputError, match="odd"):
        read_map(tmp_path / "odd.mrc")
    vol = np.zeros((8, 8, 8), np.float32)
    vol[1, 2, 3] = np.nan
    write_map(tmp_path / "nan.mrc", vol, 1.0)
    with pytest.raises(EmberInputError, match="NaN"):
        read_map(tmp_path / "nan.mrc")
    with pytest.raises(EmberInputError, match="not found"):
        read_map(tmp_path / "missing.mrc")
