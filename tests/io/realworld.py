"""Shared by the tests on real-world-layout files: tests/data/realworld (made by make_fixtures.py there)."""

import logging
from pathlib import Path

import mrcfile
import numpy as np

DATA = Path(__file__).parents[1] / "data" / "realworld"


def stack_images() -> np.ndarray:
    with mrcfile.open(DATA / "stack.mrcs") as m:
        return m.data.copy()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
