"""Sampling of the hidden variables: HEALPix directions × in-plane psi × translations
(RELION `HealpixSampling`), with adaptive oversampling children and random perturbation.

Angles are RELION (rot, tilt, psi) in degrees; translations are (x, y) in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import healpy
import numpy as np
import torch
from scipy.spatial import cKDTree

from ember.maths.rotations import euler_to_matrix


def angular_step_deg(order: int) -> float:
    """Nominal HEALPix angular step Δ(n) = 360 / (6·2ⁿ) degrees (RELION `getAngularSampling`)."""
    return 360.0 / (6 * 2**order)


def healpix_directions(order: int) -> np.ndarray:
    """(12·4ⁿ, 2) (rot, tilt) in degrees of the NESTED HEALPix pixel centres of order n."""
    nside = 2**order
    theta, phi = healpy.pix2ang(nside, np.arange(12 * nside * nside), nest=True)
    rot = np.degrees(phi)
    rot = np.where(rot > 180, rot - 360, rot)
    return np.stack([rot, np.degrees(theta)], axis=1)


def direction_vectors(rot_tilt_deg: np.ndarray) -> np.ndarray:
    """(n, 2) (rot, tilt) degrees → (n, 3) unit viewing directions (sβcα, sβsα, cβ)."""
    a, b = np.radians(rot_tilt_deg[:, 0]), np.radians(rot_tilt_deg[:, 1])
    return np.stack([np.sin(b) * np.cos(a), np.sin(b) * np.sin(a), np.cos(b)], axis=1)


def asymmetric_unit(order: int, symmetry_ops: torch.Tensor) -> np.ndarray:
    """Indices of the order-n directions kept after removing symmetry mates of earlier ones
    (RELION `removeSymmetryEquivalentPoints`)."""
    n_dir = 12 * 4**order
    if len(symmetry_ops) == 1:
        return np.arange(n_dir)
    vec = direction_vectors(healpix_directions(order))
    tol = 0.5 * math.radians(angular_step_deg(order))
    tree = cKDTree(vec)
    removed = np.zeros(n_dir, dtype=bool)
    ops = symmetry_ops.numpy()
    for i in range(n_dir):
        if removed[i]:
            continue
        for op in ops[1:]:
            mate = op.T @ vec[i]  # direction of A·R is Rᵀ·d
            for j in tree.query_ball_point(mate, tol):
                if j > i:
                    removed[j] = True
    return np.flatnonzero(~removed)


@dataclass(frozen=True)
class OrientationGrid:
    """A set of orientations: angles (R, 3) degrees, the HEALPix direction index (R,) and psi
    index (R,) of each, at `order` with `n_psi` psi values; `in_plane`: 2D references, only psi
    varies (rot = tilt = 0, one direction)."""

    angles: np.ndarray
    direction: np.ndarray
    psi_index: np.ndarray
    order: int
    n_psi: int
    in_plane: bool = False

    def __len__(self) -> int:
        return len(self.angles)

    def matrices(self, perturbation: np.ndarray | None = None) -> torch.Tensor:
        """(R, 3, 3) float64 matrices A, right-multiplied by the perturbation matrix if given."""
        a = euler_to_matrix(torch.from_numpy(self.angles))
        if perturbation is not None:
            a = a @ torch.from_numpy(perturbation)
        return a


def n_psi_for(order: int) -> int:
    return math.ceil(360.0 / angular_step_deg(order) - 1e-9)


def coarse_orientations(order: int, directions: np.ndarray) -> OrientationGrid:
    """All (direction, psi) pairs: `directions` are indices of order-n HEALPix pixels."""
    n_psi = n_psi_for(order)
    rot_tilt = healpix_directions(order)[directions]
    psi = np.arange(n_psi) * 360.0 / n_psi
    d_idx = np.repeat(np.arange(len(directions)), n_psi)
    p_idx = np.tile(np.arange(n_psi), len(directions))
    angles = np.column_stack([rot_tilt[d_idx], psi[p_idx]])
    return OrientationGrid(angles, directions[d_idx], p_idx, order, n_psi)


def in_plane_orientations(psi_step_deg: float) -> OrientationGrid:
    """In-plane rotations (0, 0, ψ) of 2D references at a step of `psi_step_deg` degrees."""
    n_psi = math.ceil(360.0 / psi_step_deg - 1e-9)
    psi = np.arange(n_psi) * 360.0 / n_psi
    angles = np.column_stack([np.zeros(n_psi), np.zeros(n_psi), psi])
    return OrientationGrid(angles, np.zeros(n_psi, dtype=np.int64), np.arange(n_psi), 0, n_psi, in_plane=True)


def in_plane_perturbation(rho: float, psi_step_deg: float, oversampling: int) -> np.ndarray:
    """Rz(ρ·Δψ) with Δψ the fine psi step (2D: only psi is perturbed)."""
    d = rho * psi_step_deg / 2**oversampling
    return euler_to_matrix(torch.tensor([0.0, 0.0, d], dtype=torch.float64)).numpy()


def oversampled_children(grid: OrientationGrid, which: np.ndarray, oversampling: int) -> OrientationGrid:
    """Children of orientations `which` (indices into `grid`): the 4^os HEALPix sub-pixels at
    order n+os × 2^os psi values → 8^os children each, in blocks of 8^os per parent (in-plane
    grids: the 2^os psi values only)."""
    if oversampling == 0:
        return OrientationGrid(grid.angles[which], grid.direction[which], grid.psi_index[which], grid.order, grid.n_psi,
                               grid.in_plane)
    if grid.in_plane:
        m = 2**oversampling
        step = 360.0 / grid.n_psi
        psi = (grid.angles[which, 2][:, None] - step / 2 + (np.arange(m)[None] + 0.5) * step / m).reshape(-1)
        zeros = np.zeros(len(psi))
        return OrientationGrid(np.column_stack([zeros, zeros, psi]), np.zeros(len(psi), dtype=np.int64),
                               np.zeros(len(psi), dtype=np.int64), 0, grid.n_psi * m, in_plane=True)
    f = 4**oversampling
    fine_order = grid.order + oversampling
    fine_dirs = healpix_directions(fine_order)
    parent_dir = grid.direction[which]
    child_dirs = (parent_dir[:, None] * f + np.arange(f)[None]).reshape(-1)  # NESTED children
    step = 360.0 / grid.n_psi
    m = 2**oversampling
    psi = grid.psi_index[which] * step
    child_psi = psi[:, None] - step / 2 + (np.arange(m)[None] + 0.5) * step / m  # (W, m)
    # (W, f, m): every direction child with every psi child
    dirs = np.repeat(child_dirs.reshape(-1, f), m, axis=1).reshape(-1)
    psis = np.tile(child_psi, (1, f)).reshape(-1)
    angles = np.column_stack([fine_dirs[dirs], psis])
    return OrientationGrid(angles, dirs, np.zeros(len(dirs), dtype=np.int64), fine_order, grid.n_psi * m)


def uniform_direction_pdf(order: int, directions: np.ndarray) -> np.ndarray:
    """(12·4ⁿ,) prior over the order-n HEALPix directions: uniform over `directions`, 0 elsewhere."""
    pdf = np.zeros(12 * 4**order)
    pdf[directions] = 1.0 / len(directions)
    return pdf


def translation_grid(offset_range_px: float, offset_step_px: float) -> np.ndarray:
    """(T, 2) translations (x, y) px on a square grid of `step` inside a disc of `range`."""
    n = int(math.ceil(offset_range_px / offset_step_px - 1e-9))
    i = np.arange(-n, n + 1)
    gx, gy = np.meshgrid(i, i, indexing="xy")
    t = np.stack([gx.ravel(), gy.ravel()], axis=1) * offset_step_px
    keep = np.hypot(t[:, 0], t[:, 1]) <= offset_range_px + 1e-6
    return t[keep]


def translation_children(step_px: float, oversampling: int) -> np.ndarray:
    """(4^os, 2) offsets of the oversampled children relative to their coarse translation."""
    m = 2**oversampling
    o = -step_px / 2 + (np.arange(m) + 0.5) * step_px / m if oversampling else np.zeros(1)
    gx, gy = np.meshgrid(o, o, indexing="xy")
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def next_perturbation(rho: float, factor: float, rng: np.random.Generator) -> float:
    """ρ ← wrap(ρ + U(0.5p, p), [−p, p]), 0 when p = 0 (RELION `resetRandomlyPerturbedSampling`)."""
    if factor <= 0:
        return 0.0
    rho += rng.uniform(0.5 * factor, factor)
    return float((rho + factor) % (2 * factor) - factor)


def perturbation_matrix(rho: float, order: int, oversampling: int) -> np.ndarray:
    """E(ρΔ, ρΔ, ρΔ) with Δ the fine angular step (RELION `getOrientations` perturbation)."""
    d = rho * angular_step_deg(order + oversampling)
    return euler_to_matrix(torch.tensor([d, d, d], dtype=torch.float64)).numpy()
