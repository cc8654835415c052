import pytest
import torch

from ember.errors import EmberInputError
from ember.maths.symmetry import symmetry_operators


@pytest.mark.parametrize(
    "name,order",
    [
        ("C1", 1),
        ("C2", 2),
        ("C7", 7),
        ("D2", 4),
        ("D7", 14),
        ("T", 12),
        ("O", 24),
        ("I", 60),
        ("I1", 60),
        ("I3", 60),
        ("I4", 60),
    ],
)
def test_group_orders_and_closure(name, order):
    ops = symmetry_operators(name)
    assert len(ops) == order
    torch.testing.assert_close(ops[0], torch.eye(3, dtype=torch.float64))
    for a in ops:
        torch.testing.assert_close(a @ a.T, torch.eye(3, dtype=torch.float64), atol=1e-9, rtol=0)
        assert torch.det(a) == pytest.approx(1.0)
        prods = a @ ops  # every product is in the group
        dist = (prods[:, None] - ops[None]).abs().amax(dim=(-1, -2)).min(dim=1).values
        assert dist.max() < 1e-4


def test_dn_axes_follow_relion():
    """Dn: n-fold along z, 2-fold along x (RELION `rot_axis 2 1 0 0`)."""
    ops = symmetry_operators("D7")
    x = torch.tensor([1.0, 0, 0], dtype=torch.float64)
    z = torch.tensor([0, 0, 1.0], dtype=torch.float64)
    flips_x = [op for op in ops if torch.allclose(op @ x, x, atol=1e-9) and torch.allclose(op @ z, -z, atol=1e-9)]
    assert len(flips_x) == 1
    fixes_z = [op for op in ops if torch.allclose(op @ z, z, atol=1e-9)]
    assert len(fixes_z) == 7


def test_icosahedral_i2_has_twofolds_on_xyz():
    ops = symmetry_operators("I")
    for axis in torch.eye(3, dtype=torch.float64):
        assert any(torch.allclose(op @ axis, axis, atol=1e-6) and abs(torch.trace(op) + 1) < 1e-6 for op in ops)


def test_unknown_group_is_clear_error():
    with pytest.raises(EmberInputError, match="symmetry"):
        symmetry_operators("X5")
