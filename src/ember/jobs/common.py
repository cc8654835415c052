"""What every job shares: job.json, the device, threads and progress callbacks."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from ember.errors import EmberInputError
from ember.io.atomic import atomic_path
from ember.io.particles import ParticleDataSet
from ember.report.html import Report

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""progress(done, total): called after each batch; the CLI draws a bar from it."""


def ember_version() -> str:
    try:
        return version("ember-em")
    except PackageNotFoundError:
        return "unknown"


def write_job_json(folder: Path, job: str, config: object) -> None:
    """Record the exact command, settings, Ember version and time beside the results."""
    record = {
        "job": job,
        "ember_version": ember_version(),
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": config_dict(config),
    }
    with atomic_path(folder / "job.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def job_report(job: str, title: str, config: object) -> Report:
    """An empty report.html page for `job`, with the command line and settings filled in."""
    return Report(job, title, version=ember_version(), command=command_line(), settings=config_dict(config))


def command_line() -> list[str]:
    """argv as typed: `ember …` for the command line (also under `python -m ember`), else as given."""
    return ["ember", *sys.argv[1:]] if Path(sys.argv[0]).name in ("ember", "__main__.py") else list(sys.argv)


def config_dict(config: object) -> dict:
    """A job's settings as JSON-ready values (paths as strings, tuples as lists)."""
    return {k: _plain(v) for k, v in dataclasses.asdict(config).items()}


class ParticleRun:
    """Geometry shared by the loop state of every particle job: needs `dataset` and
    `cfg.particle_diameter_angstrom` (Å)."""

    dataset: object
    cfg: object

    @property
    def box(self) -> int:
        return self.dataset.box

    @property
    def pixel(self) -> float:
        """Pixel size in Å."""
        return self.dataset.pixel_size

    @property
    def group_sizes(self) -> list[tuple[int, float]]:
        """(box px, pixel Å) of each optics group."""
        return [(o.box, o.pixel_size) for o in self.dataset.optics_groups]

    @property
    def mask_radius_px(self) -> float:
        """Radius of the particle mask in pixels."""
        return self.cfg.particle_diameter_angstrom / (2 * self.pixel)

    @property
    def offset_priors(self) -> np.ndarray | None:
        """(n, 2) centres of the offset prior (rlnOriginX/YPriorAngst where set, else 0), in pixels
        of the reference."""
        given = self.dataset.prior_offsets_px()
        return None if given is None else in_reference_px(self.dataset, np.nan_to_num(given, nan=0.0))


def in_reference_px(dataset: ParticleDataSet, offsets_px: np.ndarray) -> np.ndarray:
    """(n, 2) offsets in each particle's optics-group pixels → pixels of the reference (the first
    optics group's pixel size)."""
    return offsets_px * dataset.pixel_sizes()[:, None] / dataset.pixel_size


def _plain(v: object) -> object:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple):
        return list(v)
    return v


def select_device(name: str, threads: int | None = None) -> torch.device:
    """`cpu` or `cuda[:k]` → torch.device; errors clearly when CUDA is absent."""
    if threads:
        torch.set_num_threads(threads)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EmberInputError(None, "--device cuda asked but no CUDA device is available", "use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise EmberInputError(None, f"unknown device '{name}'", "use cpu or cuda")
    return torch.device(name)


def batches(n: int, size: int):
    """Yield index arrays [start, stop) covering range(n) in order."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def scale_groups(dataset: ParticleDataSet, scale: bool) -> int:
    """The number of intensity-scale groups (the largest rlnGroupNumber); warns when --scale has
    only one group to correct (RELION's scales average 1, so a single one stays 1)."""
    n = int(dataset.group_numbers().max())
    if scale and n < 2:
        logger.warning("%s: --scale has one rlnGroupNumber group only, so its scale stays 1 "
                       "(give rlnGroupNumber per micrograph or group of micrographs)", dataset.star_path)
    return n
