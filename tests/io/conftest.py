"""Fixtures of the io tests."""

import shutil
from pathlib import Path

import pytest

from tests.io.realworld import DATA


@pytest.fixture
def data(tmp_path):
    """A writable copy of tests/data/realworld (for variants of its STAR files)."""
    return Path(shutil.copytree(DATA, tmp_path / "realworld"))
