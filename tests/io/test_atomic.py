import os

import pytest

from ember.io.atomic import atomic_path


def test_output_gets_the_permissions_of_a_plain_open(tmp_path):
    """Results are readable by the group and others, as under open(): 0666 less the umask."""
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "map.mrc") as tmp:
            tmp.write_bytes(b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "map.mrc").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "map.mrc") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
