"""`ember align-maps`: rigid 3D alignment of one map onto another, with a handedness check.

The result maps a point r of the moving map (x, y, z in pixels from voxel N/2, after the mirror
z → −z when `flipped`) to R·r + t: aligned(r) = moving(Rᵀ(r − t)). Steps:

1. both maps are low-passed (raised cosine at `lowpass` Å), Fourier-cropped to a small box
   (24–48 px), soft-masked and normalised;
2. global search: HEALPix directions × psi (`angular_step`) as a batch of rotations of the
   moving map's padded, gridding-corrected transform (trilinear, as the projector), each scored by
   the peak of its FFT cross-correlation with the fixed map over all translations;
3. local refinement of the best few, then of the best one on a finer box (≤ 64 px, twice the
   resolution): a shrinking 3×3×3 grid of small rotations, sub-pixel translations from the
   correlation peak;
4. the same for the mirror image (z → −z about voxel N/2); the better hand wins;
5. the full-resolution moving map is resampled once (scipy `affine_transform`, cubic spline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ember.errors import EmberInputError
from ember.inference.sampling import angular_step_deg, coarse_orientations
from ember.io.mrc import read_map, write_map
from ember.maths.fourier import (
    fft3_centered,
    ifft3_centered,
    resolution_angstrom,
    rfft_frequencies_3d,
)
from ember.maths.fsc import fsc, resolution_shell
from ember.maths.rotations import axis_angle_matrix, matrix_to_euler, random_rotations
from ember.maths.symmetry import symmetry_generators, symmetry_operators
from ember.operators.filters import lowpass_raised_cosine, symmetrise_map
from ember.operators.interpolation import gather
from ember.operators.masks import soft_sphere
from ember.operators.projector import Projector

SEARCH_BOX = (24, 48)
"""Smallest and largest box (px) of the global search."""
REFINE_BOX = 64
"""Largest box (px) of the final local refinement."""
N_CANDIDATES = 3
"""Global-search peaks refined per hand."""


@dataclass(frozen=True)
class AlignResult:
    """Rigid fit of a moving map onto a fixed one.

    rotation : (3, 3) R acting on (x, y, z); shift_angstrom : (3,) t (x, y, z) in Å; the moving
    map's point r (Å from voxel N/2, mirrored z → −z first when `flipped`) lands on R·r + t.
    correlation : Pearson correlation of the full-resolution fixed and aligned maps over the box.
    fsc05_angstrom : resolution (Å) where their FSC drops below 0.5.
    aligned : (N, N, N) float32 moving map resampled onto the fixed one.
    search_correlation : the low-passed correlation the search maximised (this hand); and
    other_hand_correlation : the same for the other hand (None when only one hand was tried).
    """

    rotation: np.ndarray
    shift_angstrom: np.ndarray
    flipped: bool
    correlation: float
    fsc05_angstrom: float
    aligned: np.ndarray = field(repr=False)
    search_correlation: float = 0.0
    other_hand_correlation: float | None = None

    @property
    def euler_deg(self) -> np.ndarray:
        """(rot, tilt, psi) degrees of `rotation` (RELION ZYZ: R = Rz(psi)·Ry(tilt)·Rz(rot))."""
        return matrix_to_euler(torch.from_numpy(self.rotation)).numpy()

    @property
    def linear(self) -> np.ndarray:
        """(3, 3) whole linear part acting on the unmirrored moving map: R·diag(1, 1, −1) if flipped."""
        return self.rotation @ np.diag([1.0, 1.0, -1.0]) if self.flipped else self.rotation.copy()


def mirror_z(volume: np.ndarray) -> np.ndarray:
    """Mirror image z → −z about voxel N/2 of a (z, y, x) map (index i → (N − i) mod N)."""
    return np.roll(volume[::-1], 1, axis=0).copy()


def apply_rigid(volume: np.ndarray, rotation: np.ndarray, shift_px: np.ndarray, order: int = 3) -> np.ndarray:
    """out(r) = volume(Rᵀ(r − t)) about voxel N/2; r, t as (x, y, z) pixels; cubic spline by
    default, zero outside the box → (N, N, N) float32."""
    from scipy.ndimage import affine_transform

    n = volume.shape[0]
    c = np.full(3, n // 2, dtype=np.float64)
    m = np.asarray(rotation, dtype=np.float64).T[::-1, ::-1]  # Rᵀ on (x, y, z) → on (z, y, x) indices
    t = np.asarray(shift_px, dtype=np.float64)[::-1]
    out = affine_transform(volume.astype(np.float64), m, offset=c - m @ (c + t), order=order, mode="constant")
    return out.astype(np.float32)


def _even(x: float) -> int:
    return int(2 * round(x / 2))


def _prepare(volume: torch.Tensor, pixel: float, resolution: float, box: int) -> torch.Tensor:
    """Low-pass at `resolution` Å, Fourier-crop to `box` px, soft-mask and normalise (zero mean,
    unit variance inside the mask) → (box,)³ float64."""
    n = volume.shape[-1]
    shell = n * pixel / resolution
    vol = volume
    if shell < n / 2 or box < n:  # frequencies in cycles per box: the same shells in both boxes
        vol = lowpass_raised_cosine(volume, min(shell, box / 2 - 1.5), width=2.0)
    if box < n:
        spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol)))
        o = n // 2 - box // 2
        spec = spec[o : o + box, o : o + box, o : o + box]
        vol = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spec))).real
    mask = soft_sphere(box, box / 2 - 2, 2.0)
    vol = vol - (vol * mask).sum() / mask.sum()
    vol = vol * mask
    return vol / vol.std().clamp(min=1e-30)


class _Scorer:
    """Normalised cross-correlation of a fixed map with rotated copies of a moving map, over all
    circular translations, on frequencies 0 < |k| ≤ r_max of a `box` grid.

    A rotation R turns moving(r) into moving(Rᵀr), whose transform is M(Rᵀk): sampled in the
    moving map's padded, gridding-corrected transform (trilinear, as `Projector`)."""

    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, r_max: float) -> None:
        n = fixed.shape[-1]
        self.n = n
        k = rfft_frequencies_3d(n).to(torch.float64)
        radius = torch.linalg.vector_norm(k, dim=-1)
        self.inside = (radius <= r_max) & (radius > 0)
        self.k = k[self.inside].to(torch.float32)  # (K, 3)
        # Hermitian weights: the kx = 0 and kx = N/2 planes stand for themselves only
        kx = k[..., 0][self.inside]
        self.weight = torch.where((kx == 0) | (kx == n // 2), 1.0, 2.0).to(torch.float32)
        self.f = fft3_centered(fixed)[self.inside].to(torch.complex64)
        self.f_norm = float(torch.sqrt((self.weight * self.f.abs() ** 2).sum()))
        self.projector = Projector.from_volume(moving, pad=2)

    def rotated(self, rotations: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) → (B, K) complex: the moving map's transform after each rotation."""
        points = (self.k[None] @ rotations.to(torch.float32)) * self.projector.pad  # pad·Rᵀk as rows
        return gather(self.projector.spectrum, points)

    def score(self, rotations: torch.Tensor, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Best correlation (B,) and its sub-pixel translation (B, 3) (x, y, z px, moving → fixed)
        for each rotation (B, 3, 3)."""
        n = self.n
        chunk = chunk or max(1, int(4e6 // n**3))
        best, shifts = [], []
        for start in range(0, len(rotations), chunk):
            m = self.rotated(rotations[start : start + chunk])
            m_norm = torch.sqrt((self.weight * m.abs() ** 2).sum(-1))
            prod = torch.zeros((len(m), n, n, n // 2 + 1), dtype=torch.complex64)
            prod[:, self.inside] = self.f[None] * m.conj()
            cc = torch.fft.irfftn(prod, s=(n, n, n), dim=(-3, -2, -1), norm="forward")
            cc = cc / (self.f_norm * m_norm.clamp(min=1e-30))[:, None, None, None]
            flat = cc.reshape(len(m), -1).argmax(-1)
            iz, iy, ix = flat // (n * n), (flat // n) % n, flat % n
            frac = _parabolic_offsets(cc, iz, iy, ix)
            idx = torch.stack([ix, iy, iz], -1).to(torch.float64)
            t = torch.where(idx >= n / 2, idx - n, idx) + frac  # circular index → signed shift
            shifts.append(t)
            best.append(self.correlation_at(m, m_norm, t))
        return torch.cat(best), torch.cat(shifts)

    def correlation_at(self, m: torch.Tensor, m_norm: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact correlation of rotated transforms m (B, K) at translations t (B, 3) px."""
        phase = 2 * torch.pi * (t.to(torch.float32) @ self.k.T) / self.n  # (B, K)
        terms = self.weight * (self.f[None] * m.conj() * torch.polar(torch.ones_like(phase), phase)).real
        return (terms.sum(-1) / (self.f_norm * m_norm.clamp(min=1e-30))).to(torch.float64)


def _parabolic_offsets(cc: torch.Tensor, iz, iy, ix) -> torch.Tensor:
    """Sub-pixel (x, y, z) offsets of the peaks from a 3-point parabola along each axis."""
    n = cc.shape[-1]
    b = torch.arange(len(cc))
    out = []
    for axis, idx in ((3, ix), (2, iy), (1, iz)):
        def at(d: int, axis=axis, idx=idx):
            i = [iz, iy, ix]
            i[axis - 1] = (idx + d) % n
            return cc[b, i[0], i[1], i[2]].to(torch.float64)

        lo, mid, hi = at(-1), at(0), at(1)
        den = lo - 2 * mid + hi
        offset = torch.where(den < 0, 0.5 * (lo - hi) / den.clamp(max=-1e-30), torch.zeros_like(den))
        out.append(offset.clamp(-0.5, 0.5))
    return torch.stack(out, -1)


def _local_grid(step_deg: float) -> torch.Tensor:
    """(27, 3, 3) small rotations: axis-angle vectors in {−s, 0, s}³ degrees (identity first)."""
    v = torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64)
    vecs = torch.cartesian_prod(v, v, v) * math.radians(step_deg)
    out = [torch.eye(3, dtype=torch.float64)]
    for w in vecs[1:]:
        out.append(axis_angle_matrix(w, float(torch.linalg.vector_norm(w))))
    return torch.stack(out)


def _refine(
    scorer: _Scorer, rotation: torch.Tensor, step: float, final_step: float
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Hill-climb on rotations Δ·R over a 3×3×3 grid of step `step` degrees, halving it whenever
    the centre is best, until it is below `final_step` → (correlation, R (3, 3), t (3,) px)."""
    best, shift = scorer.score(rotation[None])
    score, current, t = float(best[0]), rotation, shift[0]
    for _ in range(200):
        if step < final_step:
            break
        cand = _local_grid(step) @ current
        s, sh = scorer.score(cand)
        i = int(torch.argmax(s))
        if i == 0 or float(s[i]) <= score:
            step /= 2
            continue
        score, current, t = float(s[i]), cand[i], sh[i]
    return score, current, t


def _search_hand(
    fixed: torch.Tensor, moving: torch.Tensor, pixel: float, lowpass: float, step_deg: float, seed: int
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Global search then local refinement for one hand → (correlation, R (3, 3), t (x, y, z) Å)."""
    n = fixed.shape[-1]
    # global search box: Nyquist at 2/3 of the low-pass resolution
    small = min(n, max(SEARCH_BOX[0], min(SEARCH_BOX[1], _even(3 * n * pixel / lowpass + 1))))
    scorer = _Scorer(_prepare(fixed, pixel, lowpass, small), _prepare(moving, pixel, lowpass, small),
                     r_max=min(n * pixel / lowpass, small / 2 - 1))
    order = max(0, math.ceil(math.log2(60.0 / step_deg) - 1e-9))
    grid = coarse_orientations(order, np.arange(12 * 4**order)).matrices()
    tilt = random_rotations(1, torch.Generator().manual_seed(seed))[0]
    grid = grid @ tilt  # a seeded rotation of the whole grid
    scores, _ = scorer.score(grid)
    # the best few peaks at least two steps apart
    step = angular_step_deg(order)
    chosen: list[int] = []
    for i in torch.argsort(scores, descending=True).tolist():
        r = grid[i]
        if all(_angle(r, grid[j]) > 2 * step for j in chosen):
            chosen.append(i)
        if len(chosen) == N_CANDIDATES:
            break
    refined = [_refine(scorer, grid[i], step / 2, 1.0) for i in chosen]
    _, rotation, _ = max(refined, key=lambda x: x[0])
    # finer box, twice the resolution
    res2 = max(lowpass / 2, 2 * pixel)
    fine = min(n, max(small, min(REFINE_BOX, _even(3 * n * pixel / res2 + 1))))
    scorer = _Scorer(_prepare(fixed, pixel, res2, fine), _prepare(moving, pixel, res2, fine),
                     r_max=min(n * pixel / res2, fine / 2 - 1))
    score, rotation, t = _refine(scorer, rotation, 2.0, 0.1)
    return score, rotation, t * (n * pixel / fine)


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = ((a.T @ b).diagonal().sum() - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, float(cos)))))


def _check_pair(fixed: np.ndarray, moving: np.ndarray, pixel: float, moving_pixel: float | None = None,
                names: tuple[str | Path | None, str | Path | None] = (None, None)) -> None:
    """Refuse maps that are not cubic, differ in box or pixel size (Å), or lack a pixel size."""
    if fixed.ndim != 3 or moving.ndim != 3 or len(set(fixed.shape)) != 1 or len(set(moving.shape)) != 1:
        raise EmberInputError(names[1], f"maps must be cubic 3D arrays, got {fixed.shape} and {moving.shape}")
    if fixed.shape != moving.shape:
        raise EmberInputError(
            names[1],
            f"box {moving.shape[0]} differs from the fixed map's {fixed.shape[0]}",
            "resample it onto the fixed map's grid first, e.g. relion_image_handler --i moving.mrc "
            "--rescale_angpix A --new_box N --o resampled.mrc",
        )
    if not pixel > 0:
        raise EmberInputError(names[0], f"pixel size {pixel:g} Å", "set the voxel size in the map header")
    if moving_pixel is not None and abs(moving_pixel - pixel) > 1e-3 * pixel:
        raise EmberInputError(
            names[1],
            f"pixel size {moving_pixel:.4f} Å differs from the fixed map's {pixel:.4f} Å",
            f"resample it first, e.g. relion_image_handler --i moving.mrc --rescale_angpix {pixel:.4f} "
            f"--new_box {fixed.shape[0]} --o resampled.mrc",
        )


def default_lowpass(pixel: float) -> float:
    """Default resolution (Å) of the global search: 15 Å, or 4 pixels when coarser."""
    return max(15.0, 4.0 * pixel)


def align_maps(
    fixed: np.ndarray,
    moving: np.ndarray,
    pixel: float,
    *,
    flip: bool | None = None,
    lowpass: float | None = None,
    angular_step: float = 15.0,
    seed: int = 0,
) -> AlignResult:
    """Rigidly align `moving` onto `fixed` ((N, N, N) maps, (z, y, x), same box and pixel size in Å).

    flip : None tries both hands and keeps the better; True only the mirror image (z → −z);
    False only the map as given. lowpass : resolution (Å) of the global search (default
    `default_lowpass`); the local refinement goes to half of it (at most Nyquist).
    angular_step : global-search step in degrees (HEALPix order with at most this step, psi alike).
    seed : rotates the global grid (reproducible under it).
    """
    fixed = np.asarray(fixed, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    _check_pair(fixed, moving, pixel)
    lowpass = default_lowpass(pixel) if lowpass is None else float(lowpass)
    if not lowpass >= 2 * pixel:
        raise EmberInputError(None, f"--lowpass {lowpass:g} Å is finer than Nyquist ({2 * pixel:g} Å)",
                              "give a coarser resolution")
    if not 0 < angular_step <= 60:
        raise EmberInputError(None, f"--angular_step {angular_step:g}° must be in (0, 60]", "")
    n = fixed.shape[0]
    fixed_t = torch.from_numpy(fixed).double()
    hands = [False, True] if flip is None else [bool(flip)]
    fits = {}
    for hand in hands:
        mov = mirror_z(moving) if hand else moving
        fits[hand] = _search_hand(fixed_t, torch.from_numpy(mov).double(), pixel, lowpass, angular_step, seed)
    hand = max(fits, key=lambda h: fits[h][0])
    score, rotation, t_angstrom = fits[hand]
    other = fits[not hand][0] if len(fits) == 2 else None

    rot = rotation.numpy()
    mov = mirror_z(moving) if hand else moving
    t_px = t_angstrom.numpy() / pixel
    # final sub-pixel translation on the full map: correlation peak of the rotated map
    rotated = apply_rigid(mov, rot, np.zeros(3))
    res2 = max(lowpass / 2, 2 * pixel)
    t_px = _full_shift(fixed_t, torch.from_numpy(rotated).double(), n * pixel / res2, t_px)
    aligned = apply_rigid(mov, rot, t_px)
    a, b = fixed.astype(np.float64).ravel(), aligned.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    corr = float(a @ b / max(np.sqrt((a @ a) * (b @ b)), 1e-300))
    curve = fsc(fixed_t, torch.from_numpy(aligned).double())
    res05 = float(resolution_angstrom(resolution_shell(curve, 0.5), n, pixel))
    return AlignResult(rot, t_px * pixel, hand, corr, res05, aligned, score, other)


@dataclass
class SymmetryAlignment:
    """A map moved onto the symmetry axes of a point group: aligned(r) = volume(Rᵀ(r − t)).

    rotation : (3, 3); shift_angstrom : (3,) (x, y, z) Å; score : mean correlation of the aligned
    map with its copies under the group's generators (1 = symmetric); aligned : the moved map and
    symmetrised : its average over the group, (N, N, N) float32."""

    rotation: np.ndarray
    shift_angstrom: np.ndarray
    score: float
    aligned: np.ndarray
    symmetrised: np.ndarray


def _centre_of_mass_px(volume: np.ndarray) -> np.ndarray:
    """(x, y, z) px from voxel N/2 of the positive density's centre of mass (0 without any)."""
    from scipy.ndimage import center_of_mass

    positive = np.clip(volume.astype(np.float64), 0, None)
    if not positive.any():
        return np.zeros(3)
    return np.array(center_of_mass(positive))[::-1] - volume.shape[0] // 2


def align_to_symmetry(volume: np.ndarray, pixel: float, symmetry: str, *, lowpass: float | None = None,
                      angular_step: float = 15.0, seed: int = 0) -> SymmetryAlignment:
    """Move a C1 map (N, N, N) onto the axes of point group `symmetry` (RELION's conventions, e.g.
    Dn: n-fold on z, 2-fold on x) and average it over the group (RELION `relion_align_symmetry`).

    The centre of mass goes to voxel N/2 (it lies on every symmetry axis); then the frame R is
    searched over HEALPix directions × psi at `angular_step` degrees and refined locally, scoring
    R by the correlation of the map with itself rotated by Rᵀ·g·R for each generator g (peak over
    translations, maps low-passed at `lowpass` Å on a small box as in `align_maps`)."""
    vol = np.asarray(volume, dtype=np.float32)
    _check_pair(vol, vol, pixel)
    generators = symmetry_generators(symmetry)
    ops = symmetry_operators(symmetry)
    n = vol.shape[0]
    centre = _centre_of_mass_px(vol)
    centred = apply_rigid(vol, np.eye(3), -centre)
    if len(generators) == 0:
        return SymmetryAlignment(np.eye(3), -centre * pixel, 1.0, centred, centred)
    lowpass = default_lowpass(pixel) if lowpass is None else float(lowpass)
    t = torch.from_numpy(centred).double()
    small = min(n, max(SEARCH_BOX[0], min(SEARCH_BOX[1], _even(3 * n * pixel / lowpass + 1))))
    prepared = _prepare(t, pixel, lowpass, small)
    scorer = _Scorer(prepared, prepared, r_max=min(n * pixel / lowpass, small / 2 - 1))

    def score(frames: torch.Tensor) -> torch.Tensor:
        conjugated = frames.transpose(1, 2)[:, None] @ generators[None] @ frames[:, None]  # (B, n_gen, 3, 3)
        best, _ = scorer.score(conjugated.reshape(-1, 3, 3))
        return best.reshape(len(frames), -1).mean(dim=1)

    order = max(0, math.ceil(math.log2(60.0 / angular_step) - 1e-9))
    grid = coarse_orientations(order, np.arange(12 * 4**order)).matrices()
    grid = grid @ random_rotations(1, torch.Generator().manual_seed(seed))[0]
    scores = score(grid)
    frame, best = grid[int(torch.argmax(scores))], float(scores.max())
    step = angular_step_deg(order) / 2
    while step >= 0.5:
        cand = _local_grid(step) @ frame
        s = score(cand)
        i = int(torch.argmax(s))
        if i == 0 or float(s[i]) <= best:
            step /= 2
            continue
        frame, best = cand[i], float(s[i])
    rotation = frame.numpy()
    shift_px = -rotation @ centre
    aligned = apply_rigid(vol, rotation, shift_px)
    symmetrised = symmetrise_map(torch.from_numpy(aligned), ops).numpy().astype(np.float32)
    return SymmetryAlignment(rotation, shift_px * pixel, best, aligned, symmetrised)


def _full_shift(fixed: torch.Tensor, rotated: torch.Tensor, shell: float, guess_px: np.ndarray) -> np.ndarray:
    """Sub-pixel translation (x, y, z px) that best moves `rotated` onto `fixed`, from their
    correlation (frequencies ≤ `shell`) near `guess_px` (within ±2 px)."""
    n = fixed.shape[-1]
    k = rfft_frequencies_3d(n).to(torch.float64)
    r = torch.linalg.vector_norm(k, dim=-1)
    keep = (r > 0) & (r <= min(shell, n / 2))
    prod = torch.where(keep, fft3_centered(fixed) * fft3_centered(rotated).conj(), 0)
    cc = ifft3_centered(prod, n)  # index N/2 + t holds the correlation at shift t
    c = n // 2
    g = np.round(guess_px).astype(int)
    lo = np.clip(c + g - 2, 0, n - 1)
    hi = np.clip(c + g + 3, 1, n)
    window = cc[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
    iz, iy, ix = np.unravel_index(int(torch.argmax(window)), tuple(window.shape))
    peak = torch.tensor([[lo[2] + iz]]), torch.tensor([[lo[1] + iy]]), torch.tensor([[lo[0] + ix]])
    frac = _parabolic_offsets(cc[None], peak[0][0], peak[1][0], peak[2][0])[0].numpy()
    return np.array([lo[0] + ix, lo[1] + iy, lo[2] + iz], dtype=np.float64) - c + frac


def align_maps_job(
    fixed_path: Path,
    moving_path: Path,
    output: Path,
    *,
    flip: bool | None = None,
    lowpass: float | None = None,
    angular_step: float = 15.0,
    seed: int = 0,
) -> AlignResult:
    """Read two map files, align the second onto the first and write the aligned map atomically
    (pixel size of the fixed map)."""
    fixed, pixel = read_map(fixed_path)
    moving, moving_pixel = read_map(moving_path)
    _check_pair(fixed, moving, pixel, moving_pixel, (fixed_path, moving_path))
    result = align_maps(fixed, moving, pixel, flip=flip, lowpass=lowpass, angular_step=angular_step, seed=seed)
    write_map(output, result.aligned, pixel)
    return result
