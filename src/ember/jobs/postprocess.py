"""`ember postprocess`: two half maps → the sharpened map and its solvent-corrected resolution.

RELION 3.1.3 `relion_postprocess` step by step (ALGORITHM §9, `src/postprocessing.cpp`):

1. FSC of the unmasked halves and of the masked halves (M·h1, M·h2);
2. phase randomisation (Chen et al. 2013) beyond the first shell i_r where the unmasked FSC drops
   below 0.8 (or from `--randomize_at_A`), masked again → FSC_random;
3. corrected FSC = (FSC_masked − FSC_random) / (1 − FSC_random) from shell i_r + 2 on;
4. final resolution: the last shell before the corrected FSC first drops below 0.143;
5. sharpening of (h1 + h2)/2: ÷ MTF, FSC weighting √(2·FSC/(1+FSC)), B-factor from the Guinier fit
   (ln of the shell-mean amplitude against 1/d², from `--autob_lowres` to `--autob_highres`) or ad hoc,
   optional raised-cosine low-pass;
6. postprocess.mrc, postprocess_masked.mrc, postprocess.star (RELION's blocks and columns), PNGs.

The random phases are RELION's own draws: glibc `rand()` seeded with `--seed` (RELION's
`--random_seed`, default 0), taken in RELION's order over the transform of the uncentred map, so
the same seed gives the same phase-randomised maps as `relion_postprocess`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ember.errors import EmberInputError
from ember.io.mrc import read_map, write_map
from ember.io.star import read_star_blocks, write_star_blocks
from ember.jobs.common import job_report, write_job_json
from ember.maths.fourier import fftw_frequencies
from ember.report.html import Report
from ember.report.plots import figure_central_sections, plot_fsc, plot_guinier

logger = logging.getLogger(__name__)

FSC_THRESHOLD = 0.143
PROTEIN_FRACTION_SPHERE = 0.476  # volume of the inscribed sphere / box (RELION's part-FSC fraction)
_MASK32 = 0xFFFFFFFF
_RAND_BLOCK = 4096
_RAND_COEF: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------------
# RELION's random numbers: glibc rand() (TYPE_3 additive feedback, r[i] = r[i−31] + r[i−3] mod 2³²)


def _glibc_state(seed: int) -> np.ndarray:
    """The 31 words before glibc's first output after srand(seed) → (31,) uint64."""
    s = seed & _MASK32
    s = s or 1  # glibc: srand(0) = srand(1)
    word = s - (1 << 32) if s >= 1 << 31 else s
    r = [word & _MASK32]
    for _ in range(30):  # Park–Miller 16807 with Schrage's trick, C division (towards zero)
        hi = int(word / 127773)
        word = 16807 * (word - hi * 127773) - 2836 * hi
        if word < 0:
            word += 2147483647
        r.append(word & _MASK32)
    r += r[:3]
    for i in range(34, 344):  # glibc discards the first 310 outputs
        r.append((r[i - 31] + r[i - 3]) & _MASK32)
    return np.array(r[-31:], dtype=np.uint64)


def _rand_coefficients() -> np.ndarray:
    """(B, 31) uint64: word j of the next block as a linear combination (mod 2³²) of the last 31."""
    global _RAND_COEF
    if _RAND_COEF is None:
        basis = list(np.eye(31, dtype=np.uint64))
        for j in range(31, 31 + _RAND_BLOCK):
            basis.append((basis[j - 31] + basis[j - 3]) & _MASK32)
        _RAND_COEF = np.stack(basis[31:])
    return _RAND_COEF


class RelionRandom:
    """glibc's rand() after srand(seed) as a stream consumed in order, like RELION's global generator.

    Words come in blocks of 4096 from one integer matrix product with the last 31 (uint64 arithmetic
    wraps mod 2⁶⁴, hence is exact mod 2³²), so that millions of draws take a fraction of a second."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._state = _glibc_state(seed)  # (31,) uint64: the last 31 words
        self._spare = np.empty(0, dtype=np.uint64)  # words generated but not yet handed out

    def take(self, n: int) -> np.ndarray:
        """The next n values of rand() → (n,) int64 in [0, 2³¹ − 1]."""
        coef = _rand_coefficients()
        blocks = [self._spare]
        have = len(self._spare)
        while have < n:
            block = (coef @ self._state) & _MASK32
            self._state = block[-31:]
            blocks.append(block)
            have += len(block)
        words = np.concatenate(blocks)
        self._spare = words[n:]
        return (words[:n] >> np.uint64(1)).astype(np.int64)


def glibc_rand(seed: int, n: int) -> np.ndarray:
    """The first n values of glibc's rand() after srand(seed) → (n,) int64 in [0, 2³¹ − 1]."""
    return RelionRandom(seed).take(n)


def relion_uniform_phases(draws: np.ndarray) -> np.ndarray:
    """RELION `rnd_unif(0, 2π)` of rand() values, in float32 as RELION computes it → float64 radians."""
    step = np.float32(2147483647) / np.float32(2.0 * math.pi)  # float(RAND_MAX) / float(b − a)
    return (draws.astype(np.float32) / step).astype(np.float64)


# ---------------------------------------------------------------------------------------------------
# Fourier-space pieces (half transforms (N, N, N//2+1), FFTW order, RELION's +N/2 Nyquist)


def radius_squared(n: int) -> torch.Tensor:
    """(N, N, N//2+1) int64 |k|² in cycles/box² of a 3D half transform."""
    k = fftw_frequencies(n).to(torch.int64)
    kx = torch.arange(n // 2 + 1, dtype=torch.int64)
    return k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2


def shells_of(r2: torch.Tensor) -> torch.Tensor:
    """ROUND(|k|) (half away from zero) of |k|² → same shape, int64."""
    return torch.floor(torch.sqrt(r2.to(torch.float64)) + 0.5).to(torch.int64)


def rfft3(volume: torch.Tensor) -> torch.Tensor:
    """(N, N, N) real → (N, N, N//2+1) complex128, forward-normalised (1/N³), uncentred as RELION's
    `FourierTransform` (amplitudes and FSCs equal those of the centred transform)."""
    return torch.fft.rfftn(volume.to(torch.float64), norm="forward")


def irfft3(spectrum: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `rfft3` → (N, N, N) float64."""
    return torch.fft.irfftn(spectrum, s=(n, n, n), norm="forward")


def shell_fsc(f1: torch.Tensor, f2: torch.Tensor, shells: torch.Tensor) -> np.ndarray:
    """RELION `getFSC` over every stored element of two half transforms → (N//2+1,) float64.

    Shell 0 is the raw DC correlation (±1), as RELION writes it; a shell without power gives 0."""
    n_shells = f1.shape[-1]
    keep = shells < n_shells
    idx = shells[keep]
    a, b = f1[keep], f2[keep]

    def per_shell(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_shells, dtype=torch.float64).index_add_(0, idx, v)

    num = per_shell((a.conj() * b).real)
    den = torch.sqrt(per_shell(a.abs() ** 2) * per_shell(b.abs() ** 2))
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num)).numpy()


def randomize_phases_beyond(
    volume: torch.Tensor, shell: int, rng: RelionRandom, r2: torch.Tensor
) -> torch.Tensor:
    """RELION `randomizePhasesBeyond`: every component of the uncentred transform with |k|² ≥ shell²
    gets a uniform random phase, its amplitude kept; draws taken in array (z, y, x) order.

    volume : (N, N, N) real; returns (N, N, N) float64"""
    n = volume.shape[-1]
    spectrum = rfft3(volume)
    chosen = r2 >= shell * shell
    count = int(chosen.sum())
    phases = torch.from_numpy(relion_uniform_phases(rng.take(count)))
    magnitude = spectrum[chosen].abs()
    spectrum[chosen] = torch.complex(magnitude * torch.cos(phases), magnitude * torch.sin(phases))
    return irfft3(spectrum, n)


def corrected_fsc(fsc_masked: np.ndarray, fsc_random: np.ndarray, randomize_at: int) -> np.ndarray:
    """RELION `calculateFSCtrue`: FSC_masked below shell randomize_at + 2, then
    (FSC_masked − FSC_random)/(1 − FSC_random). Sets shell 0 of both inputs to 1 where ≤ 0 (in place)."""
    for curve in (fsc_masked, fsc_random):
        if curve[0] <= 0:
            curve[0] = 1.0
    out = fsc_masked.copy()
    i = np.arange(len(out))
    late = i >= randomize_at + 2
    with np.errstate(divide="ignore", invalid="ignore"):
        out[late] = (fsc_masked[late] - fsc_random[late]) / (1.0 - fsc_random[late])
    return out


def last_shell_above(curve: np.ndarray, threshold: float = FSC_THRESHOLD) -> int:
    """Last shell (from 0) before the curve first drops below `threshold` (0 if shell 0 already does)."""
    below = np.nonzero(curve < threshold)[0]
    if len(below) == 0:
        return len(curve) - 1
    return max(int(below[0]) - 1, 0)


def fsc_weights(fsc_true: np.ndarray) -> np.ndarray:
    """RELION `applyFscWeighting` per shell: √(2F/(1+F)) up to the last shell before F < 1e−4, 0 where
    F ≤ 0 and beyond → (N//2+1,)."""
    below = np.nonzero(fsc_true < 1e-4)[0]
    ires_max = (int(below[0]) - 1) if len(below) else len(fsc_true) - 1
    w = np.zeros_like(fsc_true)
    f = fsc_true[: ires_max + 1]
    w[: ires_max + 1] = np.where(f > 0, np.sqrt(2 * np.clip(f, 0, None) / (1 + f)), 0.0)
    return w


def apply_shell_weights(spectrum: torch.Tensor, weights: np.ndarray, shells: torch.Tensor) -> torch.Tensor:
    """Multiply each component by the weight of its shell; components beyond the last shell → 0."""
    w = torch.zeros(int(shells.max()) + 1, dtype=torch.float64)
    w[: len(weights)] = torch.from_numpy(weights)
    return spectrum * w[shells]


def apply_bfactor(
    spectrum: torch.Tensor, bfactor: float, box: int, pixel_size: float, r2: torch.Tensor
) -> torch.Tensor:
    """RELION `applyBFactorToMap`: F·exp(−(B/4)·s²) with s = |k|/(N·a) Å⁻¹ up to Nyquist, 0 beyond."""
    s = torch.sqrt(r2.to(torch.float64)) / (box * pixel_size)
    factor = torch.where(s <= 1.0 / (2.0 * pixel_size), torch.exp(-(bfactor / 4.0) * s * s), torch.zeros_like(s))
    return spectrum * factor


def lowpass_factor(
    box: int, pixel_size: float, resolution: float, r2: torch.Tensor, edge_width: int = 2
) -> torch.Tensor:
    """RELION `lowPassFilterMap`: 1 below shell R − w/2, raised cosine to 0 at R + w/2, R = ROUND(N·a/d)
    (w = `edge_width` shells, integer half-width as RELION) → (N, N, N//2+1) float64."""
    ires = math.floor(box * pixel_size / resolution + 0.5)
    half = edge_width // 2
    low = max(0.0, (ires - half) / box)
    high = (ires + half) / box
    res = torch.sqrt(r2.to(torch.float64)) / box
    ramp = 0.5 + 0.5 * torch.cos(math.pi * (res - low) / max(high - low, 1e-12))
    return torch.where(res < low, torch.ones_like(res), torch.where(res > high, torch.zeros_like(res), ramp))


@dataclass(frozen=True)
class Mtf:
    """Detector MTF: resolution in Å⁻¹ (rlnResolutionInversePixel / mtf pixel size) and value."""

    resolution: np.ndarray
    value: np.ndarray


def read_mtf(path: Path, mtf_pixel_size: float) -> Mtf:
    """A RELION MTF STAR (rlnResolutionInversePixel, rlnMtfValue) → Mtf in Å⁻¹."""
    blocks = read_star_blocks(path)
    table = next((b for b in blocks.values() if "rlnMtfValue" in b), None)
    if table is None or "rlnResolutionInversePixel" not in table:
        raise EmberInputError(
            path, "no rlnResolutionInversePixel and rlnMtfValue columns", "give a RELION MTF STAR file"
        )
    res = table["rlnResolutionInversePixel"].to_numpy(np.float64) / mtf_pixel_size
    value = table["rlnMtfValue"].to_numpy(np.float64)
    if len(value) < 2:
        raise EmberInputError(path, "MTF table has fewer than 2 rows", "give the full curve")
    if (value < 1e-10).any():
        raise EmberInputError(path, "zero or negative values in rlnMtfValue", "fix the MTF curve")
    if res[-1] - res[0] < 1e-10 * len(res):
        raise EmberInputError(path, "rlnResolutionInversePixel does not increase", "fix the MTF curve")
    return Mtf(res, value)


def divide_by_mtf(spectrum: torch.Tensor, mtf: Mtf, box: int, pixel_size: float, r2: torch.Tensor) -> torch.Tensor:
    """RELION `divideByMtf`: F / MTF(s) for s < Nyquist, MTF interpolated linearly as RELION does
    (index = FLOOR(s / step), step = (s_last − s_first)/rows; clamped at both ends)."""
    s = (torch.sqrt(r2.to(torch.float64)) / (box * pixel_size)).numpy()
    rows = len(mtf.value)
    step = (mtf.resolution[-1] - mtf.resolution[0]) / rows
    i0 = np.floor(s / step).astype(np.int64)
    inner = np.clip(i0, 0, rows - 2)
    x0, x1 = mtf.resolution[inner], mtf.resolution[inner + 1]
    y0, y1 = mtf.value[inner], mtf.value[inner + 1]
    value = y0 + (y1 - y0) * (s - x0) / (x1 - x0)
    value = np.where(i0 >= rows - 1, mtf.value[-1], np.where(i0 <= 0, mtf.value[0], value))
    value = np.where(s < 1.0 / (2.0 * pixel_size), value, 1.0)
    return spectrum / torch.from_numpy(value)


@dataclass(frozen=True)
class Guinier:
    """RELION `makeGuinierPlot`: x = 1/d² (Å⁻²) per shell 0…N/2, y = ln(mean |F|) (−99 where no
    amplitude), w = 1 for shells inside the fit range with amplitude."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray


def guinier_plot(
    spectrum: torch.Tensor, shells: torch.Tensor, box: int, pixel_size: float, fit_lowres: float, fit_highres: float
) -> Guinier:
    """Shell means of |F| over every stored element (as RELION) → Guinier with fit weights."""
    n_shells = spectrum.shape[-1]
    keep = shells < n_shells
    idx = shells[keep]
    sums = torch.zeros(n_shells, dtype=torch.float64).index_add_(0, idx, spectrum[keep].abs()).numpy()
    counts = torch.zeros(n_shells, dtype=torch.float64).index_add_(0, idx, torch.ones(len(idx), dtype=torch.float64))
    counts = counts.numpy()
    i = np.arange(n_shells, dtype=np.float64)
    with np.errstate(divide="ignore"):
        res = np.where(i > 0, box * pixel_size / np.maximum(i, 1), np.inf)
    x = np.where(i > 0, 1.0 / res**2, 0.0)
    has = sums > 0
    y = np.where(has, np.log(np.where(has, sums / np.maximum(counts, 1), 1.0)), -99.0)
    w = (has & (res <= fit_lowres) & (res >= fit_highres)).astype(np.float64)
    return Guinier(x, y, w)


def fit_straight_line(g: Guinier) -> tuple[float, float, float]:
    """RELION `fitStraightLine`: weighted least squares → (slope Å², intercept, r²); zeros if the
    points do not define a line."""
    sw = g.w.sum()
    if sw <= 0:
        return 0.0, 0.0, 0.0
    ax, ay = (g.w * g.x).sum() / sw, (g.w * g.y).sum() / sw
    sxx = (g.w * g.x * g.x).sum() - sw * ax * ax
    syy = (g.w * g.y * g.y).sum() - sw * ay * ay
    sxy = (g.w * g.x * g.y).sum() - sw * ax * ay
    if not sxx > 0:
        return 0.0, 0.0, 0.0
    slope = sxy / sxx
    return float(slope), float(ay - slope * ax), float(sxy * sxy / (sxx * syy)) if syy > 0 else 0.0


# ---------------------------------------------------------------------------------------------------
# The job


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of `ember postprocess` (RELION's defaults); resolutions in Å, B-factors in Å²."""

    half1: Path
    half2: Path
    output: Path
    mask: Path | None = None
    angpix: float | None = None
    adhoc_bfac: float | None = None  # None: automatic B-factor from the Guinier fit
    autob_lowres: float = 10.0
    autob_highres: float = 0.0
    mtf: Path | None = None
    mtf_angpix: float | None = None
    randomize_at_fsc: float = 0.8
    randomize_at_angstrom: float | None = None
    low_pass: float = 0.0  # 0: none; < 0: at the final resolution
    filter_edge_width: int = 2
    skip_fsc_weighting: bool = False
    force_mask: bool = False
    seed: int = 0


@dataclass
class PostprocessResult:
    """Curves per shell 0…N/2, the resolution (Å) and B-factor (Å²), and the files written."""

    box: int
    pixel_size: float
    final_resolution: float
    resolution_shell: int
    bfactor: float
    randomize_at: int
    fsc_true: np.ndarray
    fsc_unmasked: np.ndarray
    fsc_masked: np.ndarray | None
    fsc_random: np.ndarray | None
    fsc_part_fracmask: np.ndarray | None
    frac_solvent_mask: float
    guinier_in: Guinier
    guinier_mtf: Guinier | None
    guinier_weighted: Guinier
    guinier_sharpened: Guinier
    slope: float
    intercept: float
    correlation: float
    low_pass_applied: float
    map: np.ndarray
    map_masked: np.ndarray | None
    files: list[Path]


def _check_config(cfg: PostprocessConfig) -> None:
    if cfg.angpix is not None and not cfg.angpix > 0:
        raise EmberInputError(None, f"--angpix {cfg.angpix:g}: the pixel size must be positive", "")
    if not cfg.autob_lowres > 0 or cfg.autob_highres < 0:
        raise EmberInputError(None, "--autob_lowres must be > 0 Å and --autob_highres ≥ 0 Å", "")
    if not 0 < cfg.randomize_at_fsc < 1:
        raise EmberInputError(None, f"--randomize_at_fsc {cfg.randomize_at_fsc:g} must lie in (0, 1)", "")
    if cfg.seed < 0:
        raise EmberInputError(None, f"--seed {cfg.seed} must be ≥ 0", "")
    if cfg.filter_edge_width < 0:
        raise EmberInputError(None, "--filter_edge_width must be ≥ 0 shells", "")


def _read_inputs(cfg: PostprocessConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    """The two halves, the mask (or None) and the pixel size in Å, checked for agreement."""
    h1, pix1 = read_map(cfg.half1)
    h2, pix2 = read_map(cfg.half2)
    if h1.shape != h2.shape:
        raise EmberInputError(
            cfg.half2, f"box {h2.shape[0]} differs from {cfg.half1}'s {h1.shape[0]}", "resample one map"
        )
    if abs(pix1 - pix2) > 1e-3 * max(abs(pix1), 1e-12):
        raise EmberInputError(
            cfg.half2, f"pixel size {pix2:.4f} Å differs from {cfg.half1}'s {pix1:.4f} Å", "give half maps of one run"
        )
    pixel = cfg.angpix if cfg.angpix is not None else pix1
    if not pixel > 0:
        raise EmberInputError(cfg.half1, f"header pixel size {pixel:g} Å", "give --angpix")
    mask = None
    if cfg.mask is not None:
        mask, mpix = read_map(cfg.mask)
        if mask.shape != h1.shape:
            raise EmberInputError(cfg.mask, f"box {mask.shape[0]} differs from the half maps' {h1.shape[0]}", "")
        lo, hi = float(mask.min()), float(mask.max())
        if lo < -1e-6 or hi - 1.0 > 1e-6:
            raise EmberInputError(
                cfg.mask, f"mask values {lo:g} … {hi:g} lie outside [0, 1]", "make the mask with ember mask"
            )
        if mpix > 0 and abs(mpix - pixel) > 1e-3 * pixel:
            logger.warning(f"{cfg.mask}: header pixel size {mpix:.4f} Å differs from the maps' {pixel:.4f} Å")
    return h1, h2, mask, pixel


def postprocess(cfg: PostprocessConfig) -> PostprocessResult:
    """Run the whole of `relion_postprocess` on two half maps and write the results to cfg.output."""
    _check_config(cfg)
    h1_np, h2_np, mask_np, pixel = _read_inputs(cfg)
    mtf = read_mtf(cfg.mtf, cfg.mtf_angpix or pixel) if cfg.mtf is not None else None
    n = h1_np.shape[0]
    h1, h2 = torch.from_numpy(h1_np).double(), torch.from_numpy(h2_np).double()
    r2 = radius_squared(n)
    shells = shells_of(r2)

    fsc_unmasked = shell_fsc(rfft3(h1), rfft3(h2), shells)
    fsc_masked = fsc_random = fsc_part = None
    frac_solvent = 0.0
    randomize_at = -1
    if mask_np is None:
        fsc_true = fsc_unmasked.copy()
    else:
        mask = torch.from_numpy(mask_np).double()
        fsc_masked = shell_fsc(rfft3(h1 * mask), rfft3(h2 * mask), shells)
        if cfg.randomize_at_angstrom is not None and cfg.randomize_at_angstrom > 0:
            randomize_at = int(pixel * n / cfg.randomize_at_angstrom)
        else:
            below = np.nonzero(fsc_unmasked[1:] < cfg.randomize_at_fsc)[0]
            randomize_at = int(below[0]) + 1 if len(below) else -1
        if randomize_at <= 0:
            raise EmberInputError(
                cfg.half1,
                f"the unmasked FSC never drops below {cfg.randomize_at_fsc:g}",
                "give --randomize_at_A (Å) or check that the half maps are independent",
            )
        rng = RelionRandom(cfg.seed)
        rand1 = randomize_phases_beyond(h1, randomize_at, rng, r2)
        rand2 = randomize_phases_beyond(h2, randomize_at, rng, r2)
        fsc_random = shell_fsc(rfft3(rand1 * mask), rfft3(rand2 * mask), shells)
        fsc_true = corrected_fsc(fsc_masked, fsc_random, randomize_at)
        inside = float((mask_np > 0.5).mean())
        frac_solvent = PROTEIN_FRACTION_SPHERE / inside if inside > 0 else 0.0
        fsc_part = frac_solvent * fsc_unmasked / (1.0 + (frac_solvent - 1.0) * fsc_unmasked)

    res_shell = last_shell_above(fsc_true)
    if mask_np is not None:
        unmasked_shell = last_shell_above(fsc_unmasked)
        if unmasked_shell > res_shell:
            if cfg.force_mask:
                logger.warning("the unmasked FSC extends beyond the solvent-corrected FSC (--force_mask: mask kept)")
            else:
                logger.warning(
                    "the unmasked FSC extends beyond the solvent-corrected FSC: the unmasked FSC is used "
                    "(adjust the mask, or --force_mask)"
                )
                fsc_true = fsc_unmasked.copy()
                res_shell = unmasked_shell
        elif fsc_random[res_shell] > 0.1:
            logger.warning(
                f"the phase-randomised FSC is {fsc_random[res_shell]:.2f} (> 0.10) at the estimated resolution: "
                "a softer mask with fewer features gives a more reliable estimate"
            )
    final_resolution = n * pixel / res_shell if res_shell > 0 else 999.0

    # Sharpening of the average of the halves
    spectrum = rfft3(0.5 * (h1 + h2))
    g_in = guinier_plot(spectrum, shells, n, pixel, cfg.autob_lowres, cfg.autob_highres)
    g_mtf = None
    if mtf is not None:
        spectrum = divide_by_mtf(spectrum, mtf, n, pixel, r2)
        g_mtf = guinier_plot(spectrum, shells, n, pixel, cfg.autob_lowres, cfg.autob_highres)
    if not cfg.skip_fsc_weighting:
        spectrum = apply_shell_weights(spectrum, fsc_weights(fsc_true), shells)
    g_weighted = guinier_plot(spectrum, shells, n, pixel, cfg.autob_lowres, cfg.autob_highres)
    slope = intercept = corr = 0.0
    if cfg.adhoc_bfac is None:
        slope, intercept, corr = fit_straight_line(g_weighted)
        if slope == 0.0:
            logger.warning(
                f"too few shells between {cfg.autob_lowres:g} Å and {cfg.autob_highres:g} Å for a Guinier fit: "
                "no B-factor applied (lower --autob_lowres or give --adhoc_bfac)"
            )
        bfactor = 4.0 * slope
    else:
        bfactor = cfg.adhoc_bfac
        if bfactor > 0:
            logger.warning("a positive B-factor dampens the map; use a negative value to sharpen it")
    if abs(bfactor) > 0:
        spectrum = apply_bfactor(spectrum, bfactor, n, pixel, r2)
    g_sharp = guinier_plot(spectrum, shells, n, pixel, cfg.autob_lowres, cfg.autob_highres)
    applied = cfg.low_pass
    if cfg.low_pass != 0:
        applied = final_resolution if cfg.low_pass < 0 else cfg.low_pass
        spectrum = spectrum * lowpass_factor(n, pixel, applied, r2, cfg.filter_edge_width)
    sharpened = irfft3(spectrum, n).numpy().astype(np.float32)
    masked = (sharpened * mask_np).astype(np.float32) if mask_np is not None else None

    result = PostprocessResult(
        box=n, pixel_size=pixel, final_resolution=final_resolution, resolution_shell=res_shell, bfactor=bfactor,
        randomize_at=randomize_at, fsc_true=fsc_true, fsc_unmasked=fsc_unmasked, fsc_masked=fsc_masked,
        fsc_random=fsc_random, fsc_part_fracmask=fsc_part, frac_solvent_mask=frac_solvent, guinier_in=g_in,
        guinier_mtf=g_mtf, guinier_weighted=g_weighted, guinier_sharpened=g_sharp, slope=slope,
        intercept=intercept, correlation=corr, low_pass_applied=applied, map=sharpened, map_masked=masked, files=[],
    )
    _write(cfg, result)
    return result


def star_blocks(cfg: PostprocessConfig, r: PostprocessResult) -> dict[str, dict | pd.DataFrame]:
    """postprocess.star as RELION 3.1.3 writes it: data_general (list), data_fsc, data_guinier."""
    auto = cfg.adhoc_bfac is None
    general: dict[str, object] = {
        "rlnFinalResolution": r.final_resolution,
        "rlnBfactorUsedForSharpening": r.bfactor,
        "rlnUnfilteredMapHalf1": str(cfg.half1),
        "rlnUnfilteredMapHalf2": str(cfg.half2),
    }
    if cfg.mask is not None:
        general["rlnParticleBoxFractionSolventMask"] = r.frac_solvent_mask
        general["rlnMaskName"] = str(cfg.mask)
        general["rlnRandomiseFrom"] = r.box * r.pixel_size / r.randomize_at
    if auto:
        general["rlnFittedSlopeGuinierPlot"] = r.slope
        general["rlnFittedInterceptGuinierPlot"] = r.intercept
        general["rlnCorrelationFitGuinierPlot"] = r.correlation
    i = np.arange(len(r.fsc_true))
    res = np.where(i > 0, r.box * r.pixel_size / np.maximum(i, 1), 999.0)
    fsc = {"rlnSpectralIndex": i, "rlnResolution": 1.0 / res, "rlnAngstromResolution": res}
    if cfg.mask is not None:
        fsc |= {
            "rlnFourierShellCorrelationCorrected": r.fsc_true,
            "rlnFourierShellCorrelationParticleMaskFraction": r.fsc_part_fracmask,
            "rlnFourierShellCorrelationUnmaskedMaps": r.fsc_unmasked,
            "rlnFourierShellCorrelationMaskedMaps": r.fsc_masked,
            "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps": r.fsc_random,
        }
    else:
        fsc["rlnFourierShellCorrelationUnmaskedMaps"] = r.fsc_true
    guinier = {"rlnResolutionSquared": r.guinier_in.x, "rlnLogAmplitudesOriginal": r.guinier_in.y}
    if r.guinier_mtf is not None:
        guinier["rlnLogAmplitudesMTFCorrected"] = r.guinier_mtf.y
    if not cfg.skip_fsc_weighting:
        guinier["rlnLogAmplitudesWeighted"] = r.guinier_weighted.y
    if abs(r.bfactor) > 0 or auto:
        guinier["rlnLogAmplitudesSharpened"] = r.guinier_sharpened.y
    if auto:
        guinier["rlnLogAmplitudesIntercept"] = np.full(len(r.guinier_in.x), r.intercept)
    return {"general": general, "fsc": pd.DataFrame(fsc), "guinier": pd.DataFrame(guinier)}


def _write(cfg: PostprocessConfig, r: PostprocessResult) -> None:
    out = Path(cfg.output)
    files = [out / "postprocess.mrc"]
    write_map(files[0], r.map, r.pixel_size)
    if r.map_masked is not None:
        files.append(out / "postprocess_masked.mrc")
        write_map(files[-1], r.map_masked, r.pixel_size)
    files.append(out / "postprocess.star")
    write_star_blocks(files[-1], star_blocks(cfg, r))
    curves = {"corrected": r.fsc_true, "unmasked maps": r.fsc_unmasked}
    if r.fsc_masked is not None:
        curves |= {"masked maps": r.fsc_masked, "phase-randomised masked maps": r.fsc_random}
    files.append(out / "postprocess_fsc.png")
    plot_fsc(
        files[-1], {k: np.where(np.arange(len(v)) == 0, 1.0, v) for k, v in curves.items()}, box=r.box,
        pixel_size=r.pixel_size, thresholds=(FSC_THRESHOLD,), title=f"Final resolution = {r.final_resolution:.2f} Å",
    )
    lines = {"original": r.guinier_in}
    if r.guinier_mtf is not None:
        lines["MTF-corrected"] = r.guinier_mtf
    if not cfg.skip_fsc_weighting:
        lines["FSC-weighted"] = r.guinier_weighted
    if abs(r.bfactor) > 0:
        lines[f"sharpened (B = {r.bfactor:.1f} Å²)"] = r.guinier_sharpened
    fit = None
    if cfg.adhoc_bfac is None and r.slope != 0.0:
        inside = r.guinier_weighted.w > 0
        x_fit = r.guinier_weighted.x[inside]
        fit = (r.slope, r.intercept, float(x_fit.min()), float(x_fit.max()))
    files.append(out / "postprocess_guinier.png")
    plot_guinier(files[-1], r.guinier_in.x, {k: g.y for k, g in lines.items()}, fit=fit)
    write_job_json(out, "postprocess", cfg)
    files.append(out / "job.json")
    files.append(_report(cfg, r, files).write(out / "report.html"))
    r.files = files


def _report(cfg: PostprocessConfig, r: PostprocessResult, files: list[Path]) -> Report:
    """report.html: resolution and B-factor, the FSC curves, the Guinier plot and central sections."""
    out = Path(cfg.output)
    report = job_report("postprocess", f"postprocess: {out.name}", cfg)
    report.number("final resolution (FSC 0.143" + (", masked, phase-randomisation corrected)" if cfg.mask else ")"),
                  f"{r.final_resolution:.2f} Å")
    report.number("B-factor used for sharpening", f"{r.bfactor:.1f} Å²" + (" (automatic, Guinier fit)"
                                                                            if cfg.adhoc_bfac is None else " (given)"))
    if cfg.adhoc_bfac is None:
        report.number("Guinier fit correlation", f"{r.correlation:.3f}")
    if cfg.mask is not None:
        report.number("solvent fraction of the box (mask)", f"{r.frac_solvent_mask:.3f}")
        report.number("phase randomisation from", f"{r.box * r.pixel_size / r.randomize_at:.2f} Å")
    report.number("box, pixel size", f"{r.box} px, {r.pixel_size:.3f} Å/px")
    report.figure("FSC curves: corrected, unmasked, masked and phase-randomised masked maps.",
                  out / "postprocess_fsc.png")
    report.figure("Guinier plot: log amplitudes against 1/d², with the fitted B-factor.",
                  out / "postprocess_guinier.png")
    maps = [r.map] + ([r.map_masked] if r.map_masked is not None else [])
    report.figure("Central sections of the sharpened map (and of the masked map).",
                  figure_central_sections(maps, ["postprocess.mrc", "postprocess_masked.mrc"][: len(maps)]))
    return report
