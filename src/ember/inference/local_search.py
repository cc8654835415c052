"""Local angular searches (ALGORITHM.md §2.5, RELION
`HealpixSampling::selectOrientationsWithNonZeroPriorProbability`) under point-group symmetry.

Candidates are coarse orientations (direction, psi) with the direction taken from the
symmetry-reduced set `SamplingState.directions` (§2.2), so that each candidate is a distinct pose
modulo the group. Every pose A has G equivalent poses A·R_g (R_g in the group, direction Rᵀ·d);
a candidate is kept when it lies within 3σ of *some* mate of the image's prior, in direction and
in psi for that same mate, and its log prior is the best (largest) over the mates.

RELION's selection is separable (directions: nearest mate of the candidate direction to the prior
direction; psi: compared with the prior psi unchanged). That is exact for Cn (rotations about z
keep psi) but wrong for mates across a Dn/T/O/I boundary, whose psi differs; here the psi is
taken from the same mate as the direction, which is RELION's rule wherever RELION is right.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ember.inference.estep import Candidates
from ember.inference.model import SamplingState
from ember.inference.sampling import (
    OrientationGrid,
    direction_vectors,
    healpix_directions,
    n_psi_for,
    perturbation_matrix,
)
from ember.maths.rotations import euler_to_matrix, matrix_to_euler

SIGMA_CUTOFF = 3.0  # RELION's sigma_cutoff: keep samples within 3σ


def _wrap180(x: torch.Tensor) -> torch.Tensor:
    """Angles (deg) wrapped to [−180, 180)."""
    return (x + 180.0) % 360.0 - 180.0


def local_candidates(
    sampling: SamplingState, prior_angles_deg: np.ndarray, symmetry: torch.Tensor, rho: float
) -> Candidates:
    """Per-image coarse orientations within 3σ of some symmetry mate of each image's prior (§2.5).

    sampling         : order n, oversampling, σ = `sigma_ang_deg` (deg) and the asymmetric-unit
                       direction indices `directions` (D,) of the order-n HEALPix grid
    prior_angles_deg : (B, 3) prior (rot, tilt, psi) in degrees, one row per image
    symmetry         : (G, 3, 3) point-group operators R_g (mates of a pose A are A·R_g)
    rho              : random perturbation ρ of this iteration (§2.2)

    Returns Candidates whose table (U entries) is the union over the batch, `per_image` (B, Rb)
    indices into it (−1 padding) and `log_prior` (B, Rb) = max_g −(Δdir_g² + Δψ_g²)/(2σ²) with
    Δdir_g the angle (deg) between the candidate direction and mate g's direction and Δψ_g the
    wrapped psi difference (deg) to mate g (−inf padding). An image with no sample within 3σ keeps
    the single nearest one.
    """
    order, sigma = sampling.healpix_order, float(sampling.sigma_ang_deg)
    cutoff = SIGMA_CUTOFF * sigma
    n_img = len(prior_angles_deg)
    asu = np.asarray(sampling.directions, dtype=np.int64)
    dirs = torch.from_numpy(direction_vectors(healpix_directions(order)[asu]))  # (D, 3)
    n_psi = n_psi_for(order)
    step = 360.0 / n_psi
    # psi offsets around the nearest grid psi that can lie within the cutoff
    k_max = int(math.ceil(cutoff / step)) + 1
    offsets = torch.arange(-k_max, k_max + 1)  # (K,)
    prior = euler_to_matrix(torch.from_numpy(np.asarray(prior_angles_deg, dtype=np.float64)))  # (B, 3, 3)

    b_all, key_all, lp_all = [], [], []
    near_cost = torch.full((n_img,), math.inf, dtype=torch.float64)
    near_key = torch.zeros(n_img, dtype=torch.long)
    near_lp = torch.zeros(n_img, dtype=torch.float64)
    for op in symmetry.to(torch.float64):
        mate = prior @ op  # (B, 3, 3): the pose A·R_g
        mate_angles = matrix_to_euler(mate)  # (B, 3)
        mate_dir = mate[:, 2, :]  # (B, 3): direction of A·R_g (= R_gᵀ·d), third row of the matrix
        ang = torch.rad2deg(torch.arccos((mate_dir @ dirs.T).clamp(-1.0, 1.0)))  # (B, D)
        psi_near = torch.round(mate_angles[:, 2] / step).long()  # (B,) nearest grid psi (unwrapped)
        p_idx = psi_near[:, None] + offsets[None]  # (B, K)
        dpsi = _wrap180(p_idx.double() * step - mate_angles[:, 2:3])  # (B, K)
        p_idx = p_idx % n_psi
        # nearest sample of this mate (fallback for images with nothing within 3σ)
        a_min, d_min = ang.min(dim=1)
        dp_min, k_min = dpsi.abs().min(dim=1)
        cost = a_min**2 + dp_min**2
        better = cost < near_cost
        near_cost = torch.where(better, cost, near_cost)
        near_key = torch.where(better, d_min * n_psi + p_idx.gather(1, k_min[:, None])[:, 0], near_key)
        near_lp = torch.where(better, -cost / (2 * sigma**2), near_lp)
        # all (image, direction) pairs within the cutoff × psi offsets within the cutoff
        b_idx, d_idx = torch.nonzero(ang < cutoff, as_tuple=True)  # (M,)
        ok = dpsi[b_idx].abs() < cutoff  # (M, K)
        m_idx, k_idx = torch.nonzero(ok, as_tuple=True)
        b_sel, d_sel = b_idx[m_idx], d_idx[m_idx]
        lp = -(ang[b_sel, d_sel] ** 2 + dpsi[b_sel, k_idx] ** 2) / (2 * sigma**2)
        b_all.append(b_sel)
        key_all.append(d_sel * n_psi + p_idx[b_sel, k_idx])
        lp_all.append(lp)

    b_cat, key_cat, lp_cat = torch.cat(b_all), torch.cat(key_all), torch.cat(lp_all)
    empty = torch.ones(n_img, dtype=torch.bool)
    empty[b_cat] = False
    fill = torch.nonzero(empty).squeeze(1)
    b_cat = torch.cat([b_cat, fill])
    key_cat = torch.cat([key_cat, near_key[fill]])
    lp_cat = torch.cat([lp_cat, near_lp[fill]])

    # one entry per (image, pose): the best mate's prior
    n_keys = len(asu) * n_psi
    pair, pair_inv = torch.unique(b_cat * n_keys + key_cat, return_inverse=True)  # sorted by image
    log_prior = torch.full((len(pair),), -math.inf, dtype=torch.float64)
    log_prior = log_prior.scatter_reduce(0, pair_inv, lp_cat, reduce="amax")
    b_idx, key = pair // n_keys, pair % n_keys

    uniq, inv = torch.unique(key, return_inverse=True)
    d_local, p_local = (uniq // n_psi).numpy(), (uniq % n_psi).numpy()
    direction = asu[d_local]
    angles = np.column_stack([healpix_directions(order)[direction], p_local * step])
    table = OrientationGrid(angles, direction, p_local, order, n_psi)

    counts = torch.bincount(b_idx, minlength=n_img)
    width = int(counts.max())
    slot = torch.arange(len(b_idx)) - (torch.cumsum(counts, 0) - counts)[b_idx]
    per_image = torch.full((n_img, width), -1, dtype=torch.long)
    prior_out = torch.full((n_img, width), -math.inf, dtype=torch.float64)
    per_image[b_idx, slot] = inv
    prior_out[b_idx, slot] = log_prior
    e = perturbation_matrix(rho, order, sampling.oversampling)
    return Candidates(table, table.matrices(e), prior_out, per_image)
