"""`ember mask`: a soft solvent mask from a map, as RELION's `relion_mask_create` (`src/mask.cpp`
`autoMask`, ALGORITHM §9.8).

1. optional low-pass of the input (`--lowpass` Å, RELION's raised cosine of 2 shells);
2. binarise at a level: `--ini_threshold` (voxel ≥ level; default 0.01), or the level that encloses
   `--volume_angstrom3` Å³ or the volume of `--mw_kda` kDa of protein (1.35 g/cm³), found by sorting
   the voxel values;
3. extend by `--extend_inimask` px: a 0-voxel becomes 1 if a 1-voxel lies at distance < N (a negative
   N shrinks: a 1-voxel becomes 0 if a 0-voxel lies at distance < |N|);
4. soft edge of `--width_soft_edge` px: a 0-voxel at distance d < w from the nearest 1-voxel gets
   ½ + ½·cos(π·d/w).

Distances are exact Euclidean distances between voxel centres (scipy's distance transform), the same
numbers RELION finds by searching a cube around each voxel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from ember.errors import EmberInputError
from ember.io.mrc import read_map, write_map
from ember.operators.filters import lowpass_raised_cosine

DEFAULT_THRESHOLD = 0.01  # relion_mask_create --ini_threshold
PROTEIN_DENSITY_G_CM3 = 1.35
DALTON_G = 1.66053907e-24  # g per Da


def protein_volume_angstrom3(mw_kda: float, density_g_cm3: float = PROTEIN_DENSITY_G_CM3) -> float:
    """Volume in Å³ of `mw_kda` kDa of protein at `density_g_cm3` (1 cm³ = 10²⁴ Å³): ≈ 1230 Å³ per kDa."""
    return mw_kda * 1000.0 * DALTON_G / density_g_cm3 * 1e24


def threshold_for_volume(volume: np.ndarray, enclosed_angstrom3: float, pixel_size: float) -> float:
    """The level whose binarisation (voxel ≥ level) keeps the round(V/a³) highest voxels → level."""
    count = int(round(enclosed_angstrom3 / pixel_size**3))
    if count < 1 or count > volume.size:
        raise EmberInputError(
            None,
            f"a volume of {enclosed_angstrom3:.4g} Å³ is {count} voxels of {pixel_size:g} Å; the box holds "
            f"{volume.size}",
            "give a volume between one voxel and the box",
        )
    flat = volume.reshape(-1)
    return float(np.partition(flat, flat.size - count)[flat.size - count])


def _squared_distances(binary: np.ndarray) -> np.ndarray:
    """Squared distance (px², exact integers) from every False voxel to the nearest True one; 0 on True."""
    if not binary.any():
        return np.full(binary.shape, np.inf)
    d = distance_transform_edt(~binary)
    return np.rint(d * d)


def extend_binary(binary: np.ndarray, extend_px: float) -> np.ndarray:
    """RELION's extension (> 0) or shrinking (< 0) of a binary mask by distance < |extend_px| → bool."""
    if extend_px > 0:
        return binary | (_squared_distances(binary) < extend_px * extend_px)
    if extend_px < 0:
        return binary & ~(_squared_distances(~binary) < extend_px * extend_px)
    return binary.copy()


def soft_edge(binary: np.ndarray, width_px: float) -> np.ndarray:
    """1 on the mask, ½ + ½cos(π·d/w) on 0-voxels at distance d < w from it, else 0 → float64."""
    out = binary.astype(np.float64)
    if width_px <= 0:
        return out
    d2 = _squared_distances(binary)
    edge = ~binary & (d2 < width_px * width_px)
    out[edge] = 0.5 + 0.5 * np.cos(math.pi * np.sqrt(d2[edge]) / width_px)
    return out


def create_mask(
    volume: np.ndarray,
    *,
    pixel_size: float,
    threshold: float | None = None,
    enclosed_angstrom3: float | None = None,
    extend_px: float = 0.0,
    soft_edge_px: float = 0.0,
    lowpass_angstrom: float | None = None,
) -> tuple[np.ndarray, float]:
    """`relion_mask_create` on a map (N, N, N) → (mask float32 in [0, 1], level used).

    The level is `threshold`, or the one enclosing `enclosed_angstrom3` Å³ of the (low-passed) map,
    or 0.01."""
    work = volume.astype(np.float64)
    if lowpass_angstrom is not None and lowpass_angstrom > 0:
        n = volume.shape[0]
        shell = math.floor(n * pixel_size / lowpass_angstrom + 0.5)
        work = lowpass_raised_cosine(torch.from_numpy(work), shell).numpy()
    if enclosed_angstrom3 is not None:
        level = threshold_for_volume(work, enclosed_angstrom3, pixel_size)
    else:
        level = DEFAULT_THRESHOLD if threshold is None else threshold
    binary = extend_binary(work >= level, extend_px)
    return soft_edge(binary, soft_edge_px).astype(np.float32), level


@dataclass(frozen=True)
class MaskConfig:
    """Settings of `ember mask` (RELION's names and defaults); lengths in px unless in Å."""

    input: Path
    output: Path
    ini_threshold: float | None = None
    volume_angstrom3: float | None = None
    mw_kda: float | None = None
    extend_inimask: float = 0.0
    width_soft_edge: float = 0.0
    lowpass: float | None = None
    angpix: float | None = None


@dataclass(frozen=True)
class MaskResult:
    """The level used, the voxels with mask > 0.5 and their volume in Å³, and the file written."""

    level: float
    voxels_inside: int
    volume_inside_angstrom3: float
    pixel_size: float
    output: Path


def mask_job(cfg: MaskConfig) -> MaskResult:
    """Read cfg.input, make the mask, write it to cfg.output (pixel size in the header)."""
    chosen = [name for name, v in (("--ini_threshold", cfg.ini_threshold), ("--volume_angstrom3", cfg.volume_angstrom3),
                                   ("--mw_kda", cfg.mw_kda)) if v is not None]
    if len(chosen) > 1:
        raise EmberInputError(None, f"{' and '.join(chosen)} both set the level", "give one of them")
    if cfg.width_soft_edge < 0:
        raise EmberInputError(None, f"--width_soft_edge {cfg.width_soft_edge:g} must be ≥ 0 px", "")
    for name, v in (("--volume_angstrom3", cfg.volume_angstrom3), ("--mw_kda", cfg.mw_kda), ("--angpix", cfg.angpix)):
        if v is not None and not v > 0:
            raise EmberInputError(None, f"{name} {v:g} must be positive", "")
    volume, header_pixel = read_map(cfg.input)
    pixel = cfg.angpix if cfg.angpix is not None else header_pixel
    needs_pixel = cfg.lowpass is not None or cfg.volume_angstrom3 is not None or cfg.mw_kda is not None
    if needs_pixel and not pixel > 0:
        raise EmberInputError(cfg.input, f"header pixel size {pixel:g} Å", "give --angpix")
    enclosed = cfg.volume_angstrom3 if cfg.mw_kda is None else protein_volume_angstrom3(cfg.mw_kda)
    mask, level = create_mask(
        volume, pixel_size=pixel, threshold=cfg.ini_threshold, enclosed_angstrom3=enclosed,
        extend_px=cfg.extend_inimask, soft_edge_px=cfg.width_soft_edge, lowpass_angstrom=cfg.lowpass,
    )
    write_map(cfg.output, mask, pixel)
    inside = int((mask > 0.5).sum())
    return MaskResult(level, inside, inside * max(pixel, 0.0) ** 3, pixel, Path(cfg.output))
