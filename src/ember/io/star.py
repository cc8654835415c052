"""RELION STAR files through `starfile`: particle tables in the 3.0 and 3.1+ (optics) layouts.

Every column is kept on a round trip, including ones Ember does not know. Ember always writes
the 3.1 layout (`data_optics` + `data_particles`, offsets in Å).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ember.errors import EmberInputError
from ember.io.atomic import atomic_path

OPTICS_KEYS_30 = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


@dataclass
class ParticleTable:
    """The two tables of a RELION 3.1 particle STAR file (all columns kept)."""

    optics: pd.DataFrame
    particles: pd.DataFrame

    def copy(self) -> ParticleTable:
        return ParticleTable(self.optics.copy(), self.particles.copy())


def read_star_blocks(path: str | Path) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file (loops as DataFrames, lists as one-row frames)."""
    path = Path(path)
    if not path.exists():
        raise EmberInputError(path, "file not found", "check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed text
        raise EmberInputError(path, f"not a readable STAR file ({exc})", "check its syntax") from None
    out: dict[str, pd.DataFrame] = {}
    for name, block in blocks.items():
        out[name] = block if isinstance(block, pd.DataFrame) else pd.DataFrame([block])
    return out


def _pixel_size_30(df: pd.DataFrame, path: Path) -> pd.Series:
    if "rlnImagePixelSize" in df:
        return df["rlnImagePixelSize"].astype(float)
    if "rlnDetectorPixelSize" in df and "rlnMagnification" in df:
        return 1e4 * df["rlnDetectorPixelSize"].astype(float) / df["rlnMagnification"].astype(float)
    raise EmberInputError(
        path,
        "RELION 3.0 STAR without a pixel size",
        "add rlnImagePixelSize or rlnDetectorPixelSize+rlnMagnification",
    )


def _convert_30(df: pd.DataFrame, path: Path) -> ParticleTable:
    """RELION 3.0 → 3.1: one optics group per unique (voltage, Cs, Q0, pixel size)."""
    df = df.copy()
    pixel = _pixel_size_30(df, path)
    keys = pd.DataFrame({k: df[k] if k in df else np.nan for k in OPTICS_KEYS_30})
    keys["rlnImagePixelSize"] = pixel.round(6)
    groups = keys.drop_duplicates().reset_index(drop=True)
    groups["rlnOpticsGroup"] = np.arange(1, len(groups) + 1)
    merged = keys.merge(groups, how="left", on=list(keys.columns))
    df["rlnOpticsGroup"] = merged["rlnOpticsGroup"].to_numpy()
    optics = groups.copy()
    optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{i}" for i in optics["rlnOpticsGroup"]])
    optics["rlnImageDimensionality"] = 2
    optics = optics.dropna(axis=1, how="all")
    for axis in ("X", "Y"):
        if f"rlnOrigin{axis}" in df:
            df[f"rlnOrigin{axis}Angst"] = df.pop(f"rlnOrigin{axis}").astype(float) * pixel
        if f"rlnOrigin{axis}Prior" in df:
            prior = df.pop(f"rlnOrigin{axis}Prior").astype(float)
            df[f"rlnOrigin{axis}PriorAngst"] = np.where(prior == 999, 999, prior * pixel)
    drop = [k for k in (*OPTICS_KEYS_30, "rlnDetectorPixelSize", "rlnMagnification") if k in df]
    return ParticleTable(optics, df.drop(columns=drop))


def read_particles_star(path: str | Path) -> ParticleTable:
    """Read a particle STAR file (RELION 3.0 or 3.1+) into the 3.1 layout."""
    path = Path(path)
    blocks = read_star_blocks(path)
    if "particles" in blocks and "optics" in blocks:
        table = ParticleTable(blocks["optics"].copy(), blocks["particles"].copy())
    elif len(blocks) == 1 or "" in blocks or "images" in blocks:
        table = _convert_30(next(iter(blocks.values())), path)
    else:
        raise EmberInputError(
            path,
            f"no data_particles/data_optics blocks (found {list(blocks)})",
            "give a RELION particle STAR file",
        )
    if len(table.particles) == 0:
        raise EmberInputError(path, "the particle table is empty", "give a STAR with particles")
    if "rlnOpticsGroup" not in table.particles:
        if len(table.optics) != 1:
            raise EmberInputError(path, "particles lack rlnOpticsGroup", "add the column")
        table.particles["rlnOpticsGroup"] = int(table.optics["rlnOpticsGroup"].iloc[0])
    return table


def write_particles_star(path: str | Path, table: ParticleTable) -> None:
    """Write the 3.1 layout atomically."""
    with atomic_path(path) as tmp:
        starfile.write({"optics": table.optics, "particles": table.particles}, tmp)


def write_star_blocks(path: str | Path, blocks: dict[str, pd.DataFrame | dict]) -> None:
    """Write named STAR blocks atomically (dicts become key–value lists)."""
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp)
