"""RELION STAR files through `starfile`: particle tables in the 3.0 and 3.1+ (optics) layouts.

Every column is kept on a round trip, including ones Ember does not know. Ember always writes
the 3.1 layout (`data_optics` + `data_particles`, offsets in Å).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ember.errors import EmberInputError
from ember.io.atomic import atomic_path

logger = logging.getLogger(__name__)

OPTICS_KEYS_30 = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
NUMPY_MAGIC = b"\x93NUMPY"  # cryoSPARC .cs files are NumPy arrays written with np.save


@dataclass
class ParticleTable:
    """The two tables of a RELION 3.1 particle STAR file (all columns kept)."""

    optics: pd.DataFrame
    particles: pd.DataFrame

    def copy(self) -> ParticleTable:
        return ParticleTable(self.optics.copy(), self.particles.copy())


def _starts_with(path: Path, magic: bytes) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(len(magic)) == magic


def read_star_blocks(path: str | Path) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file (loops as DataFrames, lists as one-row frames)."""
    path = Path(path)
    if not path.exists():
        raise EmberInputError(path, "file not found", "check the path")
    if path.suffix == ".cs" or _starts_with(path, NUMPY_MAGIC):
        raise EmberInputError(
            path,
            "a cryoSPARC .cs file, not a RELION STAR file",
            "convert it with csparc2star.py from pyem (or cryoSPARC's export to RELION) and give the .star",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed text
        reason = " ".join(str(exc).split())  # one line: parsers' messages end in or hold newlines
        raise EmberInputError(path, f"not a readable STAR file ({reason})", "check its syntax") from None
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


def _warn_pixel_offsets(df: pd.DataFrame, path: Path) -> None:
    """RELION 3.1+ layout with offsets (or offset priors) only in the 3.0 pixel columns: RELION 3.1
    does not read them and neither does Ember (offsets 0), but a user should know."""
    pairs = [(f"rlnOrigin{a}{p}", f"rlnOrigin{a}{p}Angst") for p in ("", "Prior") for a in ("X", "Y")]
    stale = [(px, angst) for px, angst in pairs if px in df and angst not in df]
    if stale:
        logger.warning(
            "%s: %s in pixels without the Å columns (%s) are ignored, as RELION 3.1 ignores them: offsets "
            "start at 0; to keep them, convert to Å (multiply by rlnImagePixelSize) into the Å columns",
            path, ", ".join(px for px, _ in stale), ", ".join(angst for _, angst in stale),
        )


def read_particles_star(path: str | Path) -> ParticleTable:
    """Read a particle STAR file (RELION 3.0 or 3.1+) into the 3.1 layout."""
    path = Path(path)
    blocks = read_star_blocks(path)
    if "particles" in blocks and "optics" in blocks:
        table = ParticleTable(blocks["optics"].copy(), blocks["particles"].copy())
        _warn_pixel_offsets(table.particles, path)
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


def read_reference_list(path: str | Path) -> list[Path]:
    """The maps named by rlnReferenceImage in a STAR file (RELION's `--ref refs.star`; a
    model.star's `model_classes` block first), one per class. A relative name is read from the
    current folder (RELION's project folder), else from the STAR file's folder."""
    path = Path(path)
    blocks = read_star_blocks(path)
    named = [b for name, b in sorted(blocks.items(), key=lambda kv: kv[0] != "model_classes")
             if "rlnReferenceImage" in b.columns]
    if not named:
        raise EmberInputError(path, "no rlnReferenceImage column",
                              "list one map per class under rlnReferenceImage (as in a model.star), or give a .mrc")
    maps = []
    for name in named[0]["rlnReferenceImage"].astype(str):
        found = Path(name)
        if not found.exists() and (path.parent / found).exists():
            found = path.parent / found
        maps.append(found)
    if not maps:
        raise EmberInputError(path, "rlnReferenceImage lists no maps", "list one map per class")
    return maps
