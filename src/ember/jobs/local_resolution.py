"""`ember local-resolution`: local FSC resolution in a sliding soft window, as RELION's
`relion_postprocess --locres` (`Postprocessing::run_locres`, ALGORITHM §9 item 9).

1. Phase-randomise both unmasked halves beyond shell int(N·a / locres_randomize_at) (25 Å), with
   RELION's glibc random phases (`--seed`, as `ember postprocess`).
2. Centres on RELION's grid: logical coordinates −N/2 + k·step (step = ROUND(sampling/a) px) with
   |c| < N/2 − maskrad_px; at each, a soft sphere (radius maskrad = sampling/2, raised-cosine edge
   of edgwidth = sampling) windows the two halves and the two phase-randomised halves; the
   corrected FSC (postprocess's `corrected_fsc`) gives the local resolution at its 0.143 crossing,
   capped at locres_minres (50 Å).
3. Interpolation onto the map: the window-weighted harmonic mean 1/(Σ w_p/d_p / Σ w_p); the
   locally filtered map is the window-weighted mean of the average map FSC-weighted with each
   centre's corrected FSC and low-passed at its d_p (RELION filters the sum I1 + I2; here the
   average (I1 + I2)/2, half of RELION's values).

Only centres whose window reaches the mask (mask > 0) are computed: every voxel with mask > 0
gets exactly RELION's value; voxels outside the mask are 0 in locres.mrc. The windowed FFTs of
many centres run as one batched torch.fft call (the batch size bounded by `batch_voxels`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import distance_transform_edt

from ember.errors import EmberInputError
from ember.io.mrc import write_map
from ember.io.star import write_star_blocks
from ember.jobs.common import write_job_json
from ember.jobs.postprocess import (
    FSC_THRESHOLD,
    PostprocessConfig,
    RelionRandom,
    _read_inputs,
    corrected_fsc,
    fsc_weights,
    last_shell_above,
    lowpass_factor,
    radius_squared,
    randomize_phases_beyond,
    shells_of,
)

logger = logging.getLogger(__name__)

_DIMS = (-3, -2, -1)


@dataclass(frozen=True)
class LocalResolutionConfig:
    """Settings of `ember local-resolution` (RELION's defaults); lengths in Å."""

    half1: Path
    half2: Path
    mask: Path
    output: Path
    angpix: float | None = None
    sampling: float = 25.0  # locres_sampling: grid spacing of the centres
    randomize_at: float = 25.0  # locres_randomize_at: phase randomisation beyond this resolution
    minres: float = 50.0  # locres_minres: the worst local resolution reported
    maskrad: float | None = None  # locres_maskrad: hard radius of the window (default sampling/2)
    edgwidth: float | None = None  # locres_edgwidth: cosine edge of the window (default sampling)
    filter_edge_width: int = 2  # shells of the raised-cosine low-pass edge
    seed: int = 0
    device: str = "cpu"
    batch_voxels: int = 1 << 22  # centres per batched FFT ≈ this / N³


@dataclass
class LocalResolutionResult:
    """Per-centre and per-voxel local resolutions (Å), the filtered map and the files written."""

    box: int
    pixel_size: float
    centres: np.ndarray  # (M, 3) int voxel indices (z, y, x) of the computed centres
    resolutions: np.ndarray  # (M,) local resolution (Å) at each centre
    locres: np.ndarray  # (N, N, N) float32, Å; 0 where the mask is 0
    filtered: np.ndarray  # (N, N, N) float32 locally filtered average map
    inside: np.ndarray  # (N, N, N) bool, mask > 0.5 (RELION's histogram voxels)
    median: float
    lowest: float
    highest: float
    step_px: int
    maskrad_px: int
    edgewidth_px: int
    randomize_at_shell: int
    files: list[Path]


def _check_config(cfg: LocalResolutionConfig) -> None:
    for flag, value in (("--locres_sampling", cfg.sampling), ("--locres_randomize_at", cfg.randomize_at),
                        ("--locres_minres", cfg.minres)):
        if not value > 0:
            raise EmberInputError(None, f"{flag} {value:g}: must be > 0 Å", "")
    if cfg.maskrad is not None and not cfg.maskrad > 0:
        raise EmberInputError(None, f"--locres_maskrad {cfg.maskrad:g}: must be > 0 Å", "")
    if cfg.edgwidth is not None and cfg.edgwidth < 0:
        raise EmberInputError(None, f"--locres_edgwidth {cfg.edgwidth:g}: must be ≥ 0 Å", "")
    if cfg.seed < 0:
        raise EmberInputError(None, f"--seed {cfg.seed} must be ≥ 0", "")


def grid_centres(box: int, step: int, maskrad_px: int) -> np.ndarray:
    """RELION's sampling points: logical coordinates −N/2 + k·step with |c| < N/2 − maskrad_px
    → (M, 3) int64 voxel indices (z, y, x) in RELION's loop order."""
    logical = np.arange(-(box // 2), box - box // 2, step)
    z, y, x = np.meshgrid(logical, logical, logical, indexing="ij")
    c = np.stack([z.ravel(), y.ravel(), x.ravel()], axis=1)
    myrad = box // 2 - maskrad_px
    keep = np.sqrt((c.astype(np.float32) ** 2).sum(1)) < myrad
    return c[keep] + box // 2


def soft_spheres(
    centres: torch.Tensor, box: int, radius: float, radius_outer: float, device: torch.device
) -> torch.Tensor:
    """RELION `raisedCosineMask`: 1 for d < radius, ½ − ½cos(π(r_o − d)/(r_o − r)) up to r_o, 0 beyond;
    d in voxels from each centre, no wrap-around. centres (B, 3) (z, y, x) → (B, N, N, N) float64."""
    ax = torch.arange(box, dtype=torch.float64, device=device)
    c = centres.to(device=device, dtype=torch.float64)
    d2 = ((ax[None, :] - c[:, 0:1]) ** 2)[:, :, None, None] + ((ax[None, :] - c[:, 1:2]) ** 2)[:, None, :, None]
    d = torch.sqrt(d2 + ((ax[None, :] - c[:, 2:3]) ** 2)[:, None, None, :])
    edge = max(radius_outer - radius, 1e-12)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (radius_outer - d) / edge)
    return torch.where(d > radius_outer, torch.zeros_like(d), torch.where(d < radius, torch.ones_like(d), ramp))


def batched_fsc(f1: torch.Tensor, f2: torch.Tensor, idx: torch.Tensor, keep: torch.Tensor, n_shells: int) -> np.ndarray:
    """`shell_fsc` of B pairs of half transforms (B, N, N, N//2+1) at once → (B, N//2+1) float64."""
    b = f1.shape[0]
    a, c = f1.reshape(b, -1)[:, keep], f2.reshape(b, -1)[:, keep]

    def per_shell(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(b, n_shells, dtype=torch.float64, device=v.device).index_add_(1, idx, v)

    num = per_shell((a.conj() * c).real)
    den = torch.sqrt(per_shell(a.abs() ** 2) * per_shell(c.abs() ** 2))
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num)).cpu().numpy()


def _windowed(volume: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Half transforms of `volume` (N, N, N) under each of `windows` (B, N, N, N) → (B, N, N, N//2+1)."""
    return torch.fft.rfftn(volume[None] * windows, dim=_DIMS, norm="forward")


def local_resolution_from_fsc(fsc_true: np.ndarray, box: int, pixel_size: float, minres: float) -> float:
    """RELION: N·a/i at the last shell i before the corrected FSC drops below 0.143 (999 Å at
    shell 0), capped at `minres` Å."""
    i = last_shell_above(fsc_true, FSC_THRESHOLD)
    return min(minres, box * pixel_size / i if i > 0 else 999.0)


def local_resolution(cfg: LocalResolutionConfig) -> LocalResolutionResult:
    """Run RELION's `run_locres` on two half maps within a mask; write the maps and the histogram."""
    from ember.jobs.common import select_device

    _check_config(cfg)
    device = select_device(cfg.device)
    h1_np, h2_np, mask_np, pixel = _read_inputs(
        PostprocessConfig(half1=cfg.half1, half2=cfg.half2, output=cfg.output, mask=cfg.mask, angpix=cfg.angpix)
    )
    assert mask_np is not None
    n = h1_np.shape[0]
    step = round(cfg.sampling / pixel)
    maskrad_px = round((cfg.maskrad if cfg.maskrad is not None else 0.5 * cfg.sampling) / pixel)
    edge_px = round((cfg.edgwidth if cfg.edgwidth is not None else cfg.sampling) / pixel)
    randomize_at = int(n * pixel / cfg.randomize_at)
    if step < 1:
        raise EmberInputError(None, f"--locres_sampling {cfg.sampling:g} Å is under one pixel ({pixel:.3f} Å)", "")
    if randomize_at < 1:
        raise EmberInputError(
            None, f"--locres_randomize_at {cfg.randomize_at:g} Å is coarser than the box ({n * pixel:.1f} Å)", ""
        )
    if not (mask_np > 0.5).any():
        raise EmberInputError(cfg.mask, "no voxel of the mask exceeds 0.5", "make the mask with ember mask")
    centres = grid_centres(n, step, maskrad_px)
    outer = float(maskrad_px + edge_px)
    # Only the centres whose window (d < r_outer) reaches a voxel with mask > 0
    reach = distance_transform_edt(~(mask_np > 0))
    centres = centres[reach[centres[:, 0], centres[:, 1], centres[:, 2]] < outer]
    if len(centres) == 0:
        raise EmberInputError(
            cfg.mask, f"no sampling point within {outer * pixel:.1f} Å of the mask inside radius "
            f"{(n // 2 - maskrad_px) * pixel:.1f} Å of the box centre", "centre the mask or lower --locres_sampling",
        )

    h1 = torch.from_numpy(h1_np).double()
    h2 = torch.from_numpy(h2_np).double()
    r2 = radius_squared(n)
    shells = shells_of(r2)
    rng = RelionRandom(cfg.seed)
    p1 = randomize_phases_beyond(h1, randomize_at, rng, r2).to(device)
    p2 = randomize_phases_beyond(h2, randomize_at, rng, r2).to(device)
    average = torch.fft.rfftn((0.5 * (h1 + h2)).to(device), dim=_DIMS, norm="forward")
    h1, h2 = h1.to(device), h2.to(device)
    n_shells = n // 2 + 1
    flat = shells.reshape(-1).to(device)
    keep = flat < n_shells
    idx = flat[keep]
    shells_dev = shells.to(device)
    lowpass: dict[float, torch.Tensor] = {}

    fil = torch.zeros((n, n, n), dtype=torch.float64, device=device)
    inv_res = torch.zeros_like(fil)
    weight = torch.zeros_like(fil)
    resolutions = np.zeros(len(centres))
    batch = max(1, cfg.batch_voxels // n**3)
    for start in range(0, len(centres), batch):
        chunk = torch.from_numpy(centres[start:start + batch])
        win = soft_spheres(chunk, n, float(maskrad_px), outer, device)
        fsc_masked = batched_fsc(_windowed(h1, win), _windowed(h2, win), idx, keep, n_shells)
        fsc_random = batched_fsc(_windowed(p1, win), _windowed(p2, win), idx, keep, n_shells)
        weights = np.zeros((len(chunk), int(shells.max()) + 1))
        res_chunk = np.zeros(len(chunk))
        for j in range(len(chunk)):
            fsc_true = corrected_fsc(fsc_masked[j], fsc_random[j], randomize_at)
            res_chunk[j] = local_resolution_from_fsc(fsc_true, n, pixel, cfg.minres)
            weights[j, :n_shells] = fsc_weights(fsc_true)
            if res_chunk[j] not in lowpass:
                lowpass[res_chunk[j]] = lowpass_factor(n, pixel, res_chunk[j], r2, cfg.filter_edge_width).to(device)
        resolutions[start:start + len(chunk)] = res_chunk
        filt = torch.from_numpy(weights).to(device)[:, shells_dev] * torch.stack([lowpass[d] for d in res_chunk])
        maps = torch.fft.irfftn(average[None] * filt, s=(n, n, n), dim=_DIMS, norm="forward")
        fil += (win * maps).sum(0)
        inv_res += (win / torch.from_numpy(res_chunk).to(device)[:, None, None, None]).sum(0)
        weight += win.sum(0)

    covered = weight > 0
    locres = torch.where(covered, weight / inv_res.clamp(min=1e-300), torch.zeros_like(weight))
    filtered = torch.where(covered, fil / weight.clamp(min=1e-300), torch.zeros_like(fil))
    locres_np = np.where(mask_np > 0, locres.cpu().numpy(), 0.0).astype(np.float32)
    inside = mask_np > 0.5
    values = locres_np[inside]
    result = LocalResolutionResult(
        box=n, pixel_size=pixel, centres=centres, resolutions=resolutions, locres=locres_np,
        filtered=filtered.cpu().numpy().astype(np.float32), inside=inside, median=float(np.median(values)),
        lowest=float(values.max()), highest=float(values.min()), step_px=step, maskrad_px=maskrad_px,
        edgewidth_px=edge_px, randomize_at_shell=randomize_at, files=[],
    )
    _write(cfg, result)
    return result


def _write(cfg: LocalResolutionConfig, r: LocalResolutionResult) -> None:
    from ember.report.plots import plot_local_resolution_histogram

    out = Path(cfg.output)
    files = [out / "locres.mrc", out / "locres_filtered.mrc", out / "locres_points.star",
             out / "locres_histogram.png"]
    write_map(files[0], r.locres, r.pixel_size)
    write_map(files[1], r.filtered, r.pixel_size)
    write_star_blocks(files[2], {"locres": pd.DataFrame({  # window centres in voxels from the corner
        "rlnCoordinateX": r.centres[:, 2],
        "rlnCoordinateY": r.centres[:, 1],
        "rlnCoordinateZ": r.centres[:, 0],
        "rlnAngstromResolution": r.resolutions,
    })})
    plot_local_resolution_histogram(files[3], r.locres[r.inside], r.median)
    write_job_json(out, "local_resolution", cfg)
    files.append(out / "job.json")
    r.files = files
