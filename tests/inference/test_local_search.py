"""Local angular searches under point-group symmetry (§2.5 with §2.2's asymmetric unit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.inference.engine import local_candidates, run_expectation
from ember.inference.estep import EStepSettings
from ember.inference.images import FrequencyWindow
from ember.inference.model import Model, ParticleResults, SamplingState, Sums
from ember.inference.mstep import initial_sigma2
from ember.inference.sampling import angular_step_deg, asymmetric_unit, translation_grid
from ember.io.mrc import read_map, write_map
from ember.io.particles import ParticleDataSet
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.rotations import angular_distance_deg, euler_to_matrix, matrix_to_euler, random_rotations
from ember.maths.symmetry import symmetry_operators
from tests.conftest import blob_volume

ORDER = 3
SIGMA = 2 * angular_step_deg(ORDER + 1)  # auto-refine's σ = 2 × the fine step (7.5°)


def _sampling(symmetry: str) -> SamplingState:
    return SamplingState(ORDER, 1, 2.0, 1.0, asymmetric_unit(ORDER, symmetry_operators(symmetry)), SIGMA)


def _candidate_poses(cand, b: int) -> torch.Tensor:
    """(R, 3, 3) unperturbed matrices of image b's candidates."""
    rows = cand.per_image[b][cand.per_image[b] >= 0].numpy()
    return euler_to_matrix(torch.from_numpy(cand.table.angles[rows]))


def _priors(n: int, seed: int) -> np.ndarray:
    """(n, 3) random priors with tilt in [40°, 140°]: near the poles (rot, tilt, psi) distances —
    RELION's local-search metric — say little about poses (rot and psi mix)."""
    angles = matrix_to_euler(random_rotations(20 * n, torch.Generator().manual_seed(seed))).numpy()
    return angles[(angles[:, 1] > 40) & (angles[:, 1] < 140)][:n]


@pytest.mark.parametrize("symmetry", ["C4", "D2"])
def test_local_candidates_are_unique_poses_near_a_mate_of_the_prior(symmetry):
    """Each image's candidates are distinct poses modulo the group, each within 3σ in direction
    and in psi of the same symmetry mate of the prior (and no farther as a pose than C1's search
    reaches), and there are about as many as without symmetry."""
    ops = symmetry_operators(symmetry)
    priors = _priors(8, seed=3)
    cand = local_candidates(_sampling(symmetry), priors, ops, 0.0)
    ref = local_candidates(_sampling("C1"), priors, symmetry_operators("C1"), 0.0)
    prior_m = euler_to_matrix(torch.from_numpy(priors))
    for b in range(len(priors)):
        poses = _candidate_poses(cand, b)
        # unique modulo the group
        pair = torch.stack([angular_distance_deg(poses[:, None], poses[None] @ r) for r in ops]).amin(0)
        pair.fill_diagonal_(np.inf)
        assert pair.min() > 1.0, f"image {b}: two candidates are the same pose ({pair.min():.2f}°)"
        # within 3σ of one mate A·R_g: direction (third row) and psi from the same g
        mates = prior_m[b] @ ops  # (G, 3, 3)
        mate_psi = matrix_to_euler(mates)[:, 2]
        cos = (poses[:, 2, :] @ mates[:, 2, :].T).clamp(-1, 1)  # (R, G)
        d_dir = torch.rad2deg(torch.arccos(cos))
        cand_psi = matrix_to_euler(poses)[:, 2]
        d_psi = ((cand_psi[:, None] - mate_psi[None] + 180) % 360 - 180).abs()
        near = (d_dir < 3 * SIGMA + 1e-6) & (d_psi < 3 * SIGMA + 1e-6)
        assert near.any(dim=1).all(), f"image {b}: {int((~near.any(dim=1)).sum())} candidates near no mate"
        # as full poses, no farther from the nearest mate than the C1 search goes
        pose_dist = angular_distance_deg(poses[:, None], mates[None]).amin(1)
        c1_dist = angular_distance_deg(_candidate_poses(ref, b), prior_m[b]).max()
        assert pose_dist.max() <= c1_dist + 1e-6
        assert 1 / 1.3 < len(poses) / len(_candidate_poses(ref, b)) < 1.3
    # the prior weight is the best over the mates: the top candidate is near the prior itself
    assert torch.isfinite(cand.log_prior.amax(dim=1)).all()
    assert (cand.log_prior.amax(dim=1) > -(angular_step_deg(ORDER) ** 2) / SIGMA**2).all()


def _symmetric_map(path, symmetry: str, n: int = 32) -> None:
    """A blob map with exactly the point-group symmetry: every blob centre mapped by every R."""
    base = ((6.0, 2.0, 3.0, 6.0, 1.0), (-2.0, 7.0, -4.0, 4.0, 0.6), (1.0, -3.0, 8.0, 3.0, 0.8))
    blobs = []
    for r in symmetry_operators(symmetry):
        for x, y, z, s, h in base:
            c = r @ torch.tensor([x, y, z], dtype=torch.float64)
            blobs.append((float(c[0]), float(c[1]), float(c[2]), s, h))
    write_map(path, blob_volume(n, blobs=tuple(blobs)).numpy(), 3.0)


@pytest.mark.parametrize("symmetry", ["C4", "D2"])
def test_local_estep_is_sharp_under_symmetry(tmp_path, symmetry):
    """Clean images of a symmetric map, local search (order 3, σ = 2 × fine step) from the true
    poses: one pose wins (Pmax ≈ 1) instead of G copies of it sharing the posterior."""
    n, n_img = 32, 8
    _symmetric_map(tmp_path / "sym.mrc", symmetry, n)
    star = simulate(SimulateConfig(output=tmp_path / "s", n_particles=n_img, map_path=tmp_path / "sym.mrc",
                                   max_offset_px=1.0, seed=7))
    ds = ParticleDataSet.from_star(star)
    ops = symmetry_operators(symmetry)
    idx = np.arange(n_img)
    ref = torch.from_numpy(read_map(star.parent / "truth.mrc")[0]).double()
    n_dirs = 12 * 4**ORDER
    sampling = _sampling(symmetry)
    pdf = np.zeros(n_dirs)
    pdf[sampling.directions] = 1 / len(sampling.directions)
    # clean images: a small noise model makes the posterior sharp, so that Pmax measures how many
    # candidates share the best pose rather than how coarse the grid is
    model = Model.initial([ref], 0.1 * initial_sigma2(ds, idx, 14.0), 10.0, pdf)
    win = FrequencyWindow.build(n, n)
    st = EStepSettings(win, win, torch.from_numpy(translation_grid(2.0, 1.0)), 1.0, 1, 3.0)
    sums = Sums.empty(n, 1, ds.n_optics_groups, n_dirs)
    res = ParticleResults.empty(n_img)
    run_expectation(ds, idx, model, sampling, st, sums, res, prior_angles_deg=ds.angles_deg(),
                    prior_offsets_px=np.zeros((n_img, 2)), symmetry=ops, mask_radius_px=14.0)
    assert res.pmax.mean() > 0.9, f"Pmax {np.round(res.pmax, 3)}"
    truth = euler_to_matrix(torch.from_numpy(ds.angles_deg()))
    best = euler_to_matrix(torch.from_numpy(res.angles))
    err = torch.stack([angular_distance_deg(best, truth @ r) for r in ops]).amin(0)
    assert np.median(err.numpy()) < 2 * angular_step_deg(ORDER + 1)


def test_angular_changes_ignore_symmetry_mates():
    """A particle that moves to a symmetry mate of its pose has not changed (D2: 0°, not 180°);
    a real 10° turn still counts."""
    from ember.inference.engine import angular_changes
    from ember.maths.rotations import matrix_to_euler

    ops = symmetry_operators("D2")
    old = np.array([[30.0, 70.0, 110.0], [-40.0, 120.0, 15.0]])
    mate = matrix_to_euler(euler_to_matrix(torch.from_numpy(old)) @ ops[3]).numpy()
    np.testing.assert_allclose(angular_changes(old, mate, ops), 0.0, atol=1e-4)
    assert angular_changes(old, mate).min() > 90  # without symmetry the flip looks large
    turned = old + np.array([0.0, 0.0, 10.0])
    np.testing.assert_allclose(angular_changes(old, turned, ops), 10.0, atol=1e-4)
