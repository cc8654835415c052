"""`ember fsc`: Fourier shell correlation of two maps, resolution at 0.5 and 0.143."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ember.errors import EmberInputError
from ember.io.mrc import read_map
from ember.io.star import write_star_blocks
from ember.maths.fourier import resolution_angstrom
from ember.maths.fsc import fsc, resolution_shell
from ember.report.plots import plot_fsc


@dataclass(frozen=True)
class FscResult:
    """curve (N//2+1,), box N, pixel size Å, and resolutions in Å at FSC 0.5 and 0.143."""

    curve: np.ndarray
    box: int
    pixel_size: float
    resolution_05: float
    resolution_0143: float

    def table(self) -> pd.DataFrame:
        shells = np.arange(len(self.curve))
        return pd.DataFrame(
            {
                "rlnSpectralIndex": shells,
                "rlnResolution": shells / (self.box * self.pixel_size),
                "rlnAngstromResolution": [resolution_angstrom(int(i), self.box, self.pixel_size) for i in shells],
                "rlnFourierShellCorrelation": self.curve,
            }
        )


def fsc_of_maps(map1: np.ndarray, map2: np.ndarray, pixel_size: float) -> FscResult:
    curve = fsc(torch.from_numpy(map1).double(), torch.from_numpy(map2).double()).numpy()
    box = map1.shape[0]
    return FscResult(
        curve,
        box,
        pixel_size,
        resolution_angstrom(resolution_shell(torch.from_numpy(curve), 0.5), box, pixel_size),
        resolution_angstrom(resolution_shell(torch.from_numpy(curve), 0.143), box, pixel_size),
    )


def fsc_job(path1: Path, path2: Path, output: Path | None = None) -> FscResult:
    """Compare two map files; with `output`, write fsc.star and fsc.png there."""
    map1, pix1 = read_map(path1)
    map2, pix2 = read_map(path2)
    for path, pix in ((path1, pix1), (path2, pix2)):
        if not pix > 0:  # unset voxel size: resolutions in Å would read 0.00
            raise EmberInputError(
                path,
                f"header pixel size {pix:g} Å: resolutions in Å need the map's pixel size",
                "set the voxel size in the map header (e.g. relion_image_handler --angpix)",
            )
    if map1.shape != map2.shape:
        raise EmberInputError(path2, f"box {map2.shape[0]} differs from {path1}'s {map1.shape[0]}", "resample one map")
    if abs(pix1 - pix2) > 1e-3 * pix1:
        raise EmberInputError(path2, f"pixel size {pix2:.4f} Å differs from {path1}'s {pix1:.4f} Å", "fix the header")
    result = fsc_of_maps(map1, map2, pix1)
    if output is not None:
        write_star_blocks(Path(output) / "fsc.star", {"fsc": result.table()})
        plot_fsc(
            Path(output) / "fsc.png",
            {f"{Path(path1).name} vs {Path(path2).name}": result.curve},
            box=result.box,
            pixel_size=pix1,
        )
    return result
