"""Expected angular and translational accuracy (RELION `calculateExpectedAngularErrors`, §6.4):
the smallest pose error whose signal change Σ|C(V̂(A) − V̂(A'))|²/(2σ²) exceeds −ln 0.01."""

from __future__ import annotations

import numpy as np
import torch

from ember.inference.estep import noise_weights, phases
from ember.inference.images import FrequencyWindow
from ember.io.particles import ParticleDataSet
from ember.maths.rotations import euler_to_matrix
from ember.operators.ctf import particle_ctfs
from ember.operators.projector import Projector

THRESHOLD = 4.60517  # −ln(0.01)
ANGLE_ERRORS = np.concatenate([np.arange(0.05, 0.2, 0.05), np.arange(0.2, 1, 0.1), np.arange(1, 2, 0.2),
                               np.arange(2, 5, 0.5), np.arange(5, 10, 1.0), np.arange(10, 20, 2.0),
                               np.arange(20, 30.01, 5.0)])
SHIFT_ERRORS = np.concatenate([np.arange(0.1, 1, 0.1), np.arange(1, 2, 0.2), np.arange(2, 5, 0.5),
                               np.arange(5, 10.01, 1.0)])


def expected_accuracy(
    projector: Projector,
    sigma2: torch.Tensor,
    dataset: ParticleDataSet,
    indices: np.ndarray,
    angles_deg: np.ndarray,
    window: FrequencyWindow,
    rng: np.random.Generator,
    use_ctf: bool = True,
) -> tuple[float, float]:
    """Mean expected error over particles `indices`: (rotation in degrees, translation in px)."""
    n = len(indices)
    w = noise_weights(window, sigma2, maxcc=False)
    if use_ctf and dataset.has_ctf:
        c2 = particle_ctfs(dataset, indices, dtype=torch.float64).reshape(n, -1)[:, window.index] ** 2
    else:
        c2 = torch.ones((n, len(window.index)), dtype=torch.float64)
    base = projector.project_frequencies(euler_to_matrix(torch.from_numpy(angles_deg)), window.k_ref)  # (n, K)
    axis = rng.integers(0, 3, size=n)
    eps = torch.from_numpy(ANGLE_ERRORS)
    moved = np.repeat(angles_deg[:, None, :], len(eps), axis=1)  # (n, E, 3)
    moved[np.arange(n), :, axis] += ANGLE_ERRORS[None, :]
    proj = projector.project_frequencies(euler_to_matrix(torch.from_numpy(moved.reshape(-1, 3))), window.k_ref)
    diff = (proj.reshape(n, len(eps), -1) - base[:, None]).abs().double() ** 2
    power = (diff * (w * c2)[:, None, :]).sum(-1)  # (n, E)
    acc_rot = _first_above(power, ANGLE_ERRORS, 30.0)
    shift_axis = rng.integers(0, 2, size=n)
    shifts = np.zeros((n, len(SHIFT_ERRORS), 2))
    shifts[np.arange(n), :, shift_axis] = SHIFT_ERRORS[None, :]
    ph = phases(window, torch.from_numpy(shifts), dataset.box)  # (n, S, K)
    power_t = ((base.abs().double() ** 2 * w * c2)[:, None, :] * (1 - ph).abs() ** 2).sum(-1)
    acc_trans = _first_above(power_t, SHIFT_ERRORS, 10.0)
    return float(acc_rot.mean()), float(acc_trans.mean())


def _first_above(power: torch.Tensor, grid: np.ndarray, cap: float) -> np.ndarray:
    above = (power > THRESHOLD).numpy()
    first = np.where(above.any(axis=1), above.argmax(axis=1), -1)
    return np.where(first >= 0, grid[np.maximum(first, 0)], cap)
