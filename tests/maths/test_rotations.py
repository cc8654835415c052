import torch

from ember.maths.rotations import (
    angular_distance_deg,
    euler_to_matrix,
    matrix_to_euler,
    random_rotations,
)


def test_relion_fixture_30_60_90():
    """ALGORITHM §2.1 worked example (RELION Euler_angles2matrix)."""
    a = euler_to_matrix(torch.tensor([30.0, 60.0, 90.0], dtype=torch.float64))
    expected = torch.tensor(
        [[-0.5, 0.866025, 0.0], [-0.433013, -0.25, 0.866025], [0.75, 0.433013, 0.5]], dtype=torch.float64
    )
    torch.testing.assert_close(a, expected, atol=1e-6, rtol=0)
    image = a @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(image, torch.tensor([-0.5, -0.433013, 0.75], dtype=torch.float64), atol=1e-6, rtol=0)
    image_z = a @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(image_z[:2], torch.tensor([0.0, 0.866025], dtype=torch.float64), atol=1e-6, rtol=0)


def test_relion_fixture_90_90_0_viewing_direction():
    a = euler_to_matrix(torch.tensor([90.0, 90.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        a, torch.tensor([[0.0, 0, -1], [-1, 0, 0], [0, 1, 0]], dtype=torch.float64), atol=1e-12, rtol=0
    )
    # viewing direction = third row = +y
    torch.testing.assert_close(a[2], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_matrix_euler_round_trip():
    rots = random_rotations(500, torch.Generator().manual_seed(3))
    angles = matrix_to_euler(rots)
    assert (angles[:, 1] >= 0).all() and (angles[:, 1] <= 180).all()
    assert (angles[:, [0, 2]].abs() <= 180).all()
    back = euler_to_matrix(angles)
    assert angular_distance_deg(back, rots).max() < 1e-6


def test_degenerate_tilt_puts_rotation_in_psi():
    for tilt in (0.0, 180.0):
        a = euler_to_matrix(torch.tensor([40.0, tilt, 10.0], dtype=torch.float64))
        angles = matrix_to_euler(a)
        assert angles[0] == 0.0
        assert angular_distance_deg(euler_to_matrix(angles), a) < 1e-6


def test_random_rotations_are_uniform():
    """Uniform on SO(3): the z axis image is uniform on the sphere (mean ≈ 0, <z²> ≈ 1/3)."""
    rots = random_rotations(20000, torch.Generator().manual_seed(1))
    z = rots[:, :, 2]
    assert z.mean(0).abs().max() < 0.02
    assert abs(float((z[:, 2] ** 2).mean()) - 1 / 3) < 0.01
