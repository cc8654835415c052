"""RELION ZYZ Euler angles (rot, tilt, psi in degrees) ↔ rotation matrices.

A = Rz(psi)·Ry(tilt)·Rz(rot) maps map (reference) coordinates to image coordinates:
r_img = A · r_map, with vectors as (x, y, z) columns (RELION `Euler_angles2matrix`).
"""

from __future__ import annotations

import math

import torch


def euler_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """(..., 3) (rot, tilt, psi) in degrees → (..., 3, 3) matrices A (map → image)."""
    a = torch.deg2rad(angles_deg)
    ca, cb, cg = torch.cos(a[..., 0]), torch.cos(a[..., 1]), torch.cos(a[..., 2])
    sa, sb, sg = torch.sin(a[..., 0]), torch.sin(a[..., 1]), torch.sin(a[..., 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], dim=-1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], dim=-1),
        torch.stack([sc, ss, cb], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_euler(matrices: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 3) (rot, tilt, psi) degrees, tilt ∈ [0, 180] (RELION `Euler_matrix2angles`)."""
    m = matrices.to(torch.float64)
    abs_sb = torch.sqrt(m[..., 0, 2] ** 2 + m[..., 1, 2] ** 2)
    eps = 16 * torch.finfo(torch.float32).eps
    gamma = torch.atan2(m[..., 1, 2], -m[..., 0, 2])
    alpha = torch.atan2(m[..., 2, 1], m[..., 2, 0])
    beta = torch.atan2(abs_sb, m[..., 2, 2])
    degenerate = abs_sb <= eps
    up = m[..., 2, 2] > 0
    gamma_d = torch.where(up, torch.atan2(-m[..., 1, 0], m[..., 0, 0]), torch.atan2(m[..., 1, 0], -m[..., 0, 0]))
    alpha = torch.where(degenerate, torch.zeros_like(alpha), alpha)
    beta = torch.where(degenerate, torch.where(up, 0.0, torch.full_like(beta, math.pi)), beta)
    gamma = torch.where(degenerate, gamma_d, gamma)
    return torch.rad2deg(torch.stack([alpha, beta, gamma], dim=-1)).to(matrices.dtype)


def axis_angle_matrix(axis: torch.Tensor, angle_rad: float) -> torch.Tensor:
    """(3,) axis, angle in radians → (3, 3) right-handed rotation (Rodrigues)."""
    u = axis.to(torch.float64) / torch.linalg.vector_norm(axis.to(torch.float64))
    k = torch.tensor([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]], dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    return eye + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) float64 rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )


def angular_distance_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in degrees between rotations (..., 3, 3) a and b."""
    r = a.transpose(-1, -2) @ b
    cos = (r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    axis = torch.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = torch.linalg.vector_norm(axis, dim=-1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))
