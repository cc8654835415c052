"""One E-step over a set of particles: builds the orientation candidates (global or local), the
coarse projections, streams the particles a batch at a time and calls `estep.expectation`."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ember.inference.estep import Candidates, EStepSettings, FineGrid, expectation
from ember.inference.images import prepare_batch
from ember.inference.model import HalfModel, ParticleResults, SamplingState, Sums
from ember.inference.sampling import (
    OrientationGrid,
    coarse_orientations,
    direction_vectors,
    healpix_directions,
    n_psi_for,
    perturbation_matrix,
)
from ember.io.particles import ParticleDataSet
from ember.maths.rotations import angular_distance_deg, euler_to_matrix
from ember.operators.projector import Projector


def global_candidates(sampling: SamplingState, pdf_direction: np.ndarray, rho: float) -> Candidates:
    """All coarse orientations over the asymmetric unit; prior log pdf_direction."""
    grid = coarse_orientations(sampling.healpix_order, sampling.directions)
    e = perturbation_matrix(rho, sampling.healpix_order, sampling.oversampling)
    pdf = pdf_direction[grid.direction]
    log_prior = torch.from_numpy(np.log(np.maximum(pdf, 1e-300)))
    return Candidates(grid, grid.matrices(e), log_prior)


def local_candidates(
    sampling: SamplingState, prior_angles_deg: np.ndarray, symmetry: torch.Tensor, rho: float
) -> Candidates:
    """Per-image orientations within 3σ of each image's prior direction and psi (§2.5), with
    Gaussian prior weights; the table is the union over the batch."""
    order, sigma = sampling.healpix_order, float(sampling.sigma_ang_deg)
    dirs = torch.from_numpy(direction_vectors(healpix_directions(order)))  # (D, 3)
    prior_dir = torch.from_numpy(direction_vectors(prior_angles_deg[:, :2]))  # (B, 3)
    mates = prior_dir[None] @ symmetry  # (G, B, 3): dᵀR for every operator R
    cos = (mates @ dirs.T).amax(dim=0).clamp(-1, 1)  # (B, D)
    ang_dir = torch.rad2deg(torch.arccos(cos))
    n_psi = n_psi_for(order)
    psi = torch.arange(n_psi, dtype=torch.float64) * 360.0 / n_psi
    dpsi = (psi[None] - torch.from_numpy(prior_angles_deg[:, 2:3]) + 180) % 360 - 180  # (B, P)
    keep = (ang_dir < 3 * sigma)[:, :, None] & (dpsi.abs() < 3 * sigma)[:, None, :]  # (B, D, P)
    for b in torch.nonzero(~keep.any(dim=(1, 2))).squeeze(1).tolist():  # never leave an image empty
        keep[b, ang_dir[b].argmin(), dpsi[b].abs().argmin()] = True
    b_idx, d_idx, p_idx = torch.nonzero(keep, as_tuple=True)
    log_prior = -(ang_dir[b_idx, d_idx] ** 2 + dpsi[b_idx, p_idx] ** 2) / (2 * sigma**2)
    key = d_idx * n_psi + p_idx
    uniq, inv = torch.unique(key, return_inverse=True)
    rot_tilt = healpix_directions(order)[(uniq // n_psi).numpy()]
    angles = np.column_stack([rot_tilt, psi[uniq % n_psi].numpy()])
    table = OrientationGrid(angles, (uniq // n_psi).numpy(), (uniq % n_psi).numpy(), order, n_psi)
    counts = torch.bincount(b_idx, minlength=len(prior_angles_deg))
    width = int(counts.max())
    slot = torch.arange(len(b_idx)) - (torch.cumsum(counts, 0) - counts)[b_idx]
    per_image = torch.full((len(prior_angles_deg), width), -1, dtype=torch.long)
    prior = torch.full((len(prior_angles_deg), width), -math.inf, dtype=torch.float64)
    per_image[b_idx, slot] = inv
    prior[b_idx, slot] = log_prior
    e = perturbation_matrix(rho, order, sampling.oversampling)
    return Candidates(table, table.matrices(e), prior, per_image)


def run_expectation(
    dataset: ParticleDataSet,
    indices: np.ndarray,
    model: HalfModel,
    sampling: SamplingState,
    settings: EStepSettings,
    sums: Sums,
    results: ParticleResults,
    *,
    prior_angles_deg: np.ndarray,
    prior_offsets_px: np.ndarray,
    symmetry: torch.Tensor,
    mask_radius_px: float,
    batch_size: int = 64,
    use_ctf: bool = True,
    progress: Callable[[int], None] | None = None,
) -> None:
    """E-step of one model over particles `indices` (rows of the data set)."""
    projector = Projector.from_volume(model.reference, r_max=settings.fine_window.size // 2)
    shared, grid = None, None
    if sampling.sigma_ang_deg is None:
        shared = global_candidates(sampling, model.pdf_direction, model.rho)
        proj_c = projector.project_frequencies(shared.matrices, settings.coarse_window.k)
        if settings.oversampling > 0 and FineGrid.fits(len(shared.table), settings.oversampling, settings.fine_window):
            grid = FineGrid.build(projector, shared, settings.oversampling, settings.fine_window)
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        batch = prepare_batch(dataset, idx, prior_offsets_px[idx], mask_radius_px=mask_radius_px, use_ctf=use_ctf)
        if shared is None:
            cand = local_candidates(sampling, prior_angles_deg[idx], symmetry, model.rho)
            proj = projector.project_frequencies(cand.matrices, settings.coarse_window.k)
        else:
            cand, proj = shared, proj_c
        expectation(batch, model, projector, cand, proj, settings, sums, results, grid)
        if progress:
            progress(len(idx))
    if grid is not None:
        grid.insert_into(sums, settings.fine_window)


def angular_changes(old_deg: np.ndarray, new_deg: np.ndarray) -> np.ndarray:
    """Angle (deg) between old and new orientations of each particle (not symmetry-aware)."""
    a = euler_to_matrix(torch.from_numpy(old_deg))
    b = euler_to_matrix(torch.from_numpy(new_deg))
    return angular_distance_deg(a, b).numpy()
