import numpy as np
import pytest
import torch

from ember.inference.sampling import (
    angular_step_deg,
    asymmetric_unit,
    coarse_orientations,
    n_psi_for,
    oversampled_children,
    translation_children,
    translation_grid,
)
from ember.maths.rotations import angular_distance_deg, euler_to_matrix
from ember.maths.symmetry import symmetry_operators


@pytest.mark.parametrize("order,step,n_psi,total", [(0, 60, 6, 72), (1, 30, 12, 576), (2, 15, 24, 4608),
                                                    (3, 7.5, 48, 36864)])
def test_relion_sampling_table(order, step, n_psi, total):
    """ALGORITHM §2.2 table: Npix·n_psi orientations at each HEALPix order."""
    assert angular_step_deg(order) == pytest.approx(step)
    assert n_psi_for(order) == n_psi
    assert len(coarse_orientations(order, np.arange(12 * 4**order))) == total


def test_children_surround_their_parent():
    grid = coarse_orientations(2, np.arange(192))
    parents = np.array([0, 100, 3000])
    kids = oversampled_children(grid, parents, 1)
    assert len(kids) == 3 * 8
    pm = euler_to_matrix(torch.from_numpy(grid.angles[parents])).repeat_interleave(8, 0)
    km = euler_to_matrix(torch.from_numpy(kids.angles))
    dist = angular_distance_deg(pm, km)
    assert dist.max() < 15.0  # within the parent's cell (coarse step 15°)
    assert dist.min() > 0.5  # and none is the parent itself


def test_asymmetric_unit_shrinks_by_group_order():
    n = 12 * 4**3
    for name in ("C2", "D2", "C4"):
        g = len(symmetry_operators(name))
        kept = len(asymmetric_unit(3, symmetry_operators(name)))
        assert n / g <= kept < 1.3 * n / g


def test_translations_disc_and_children():
    t = translation_grid(5, 2)
    assert len(t) == 21 and np.hypot(*t.T).max() <= 5
    ch = translation_children(2.0, 1)
    np.testing.assert_allclose(sorted(set(ch[:, 0])), [-0.5, 0.5])
