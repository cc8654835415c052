"""The contrast transfer function with RELION's conventions (`src/ctf.h`, `CTF::getCTF`).

CTF(s) = S · (−sin γ(s)) · exp(−B s²/4),  γ = −πλΔf(θ)s² + (π/2)Cs λ³ s⁴ − φ − atan(Q0/√(1−Q0²)),
Δf(θ) = ΔfU cos²(θ−α) + ΔfV sin²(θ−α). Positive defocus = underfocus; CTF(0) = +Q0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ember.maths.fourier import rfft_frequencies_2d


def electron_wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic electron wavelength λ in Å for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v))


@dataclass(frozen=True)
class CtfOptics:
    """Per-optics-group CTF constants: voltage (kV), Cs (mm), amplitude contrast Q0."""

    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1


def ctf_from_frequencies(
    s_xy: torch.Tensor,
    *,
    optics: CtfOptics,
    defocus_u_angstrom: torch.Tensor,
    defocus_v_angstrom: torch.Tensor,
    defocus_angle_deg: torch.Tensor,
    bfactor_a2: torch.Tensor | float = 0.0,
    phase_shift_deg: torch.Tensor | float = 0.0,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """CTF at spatial frequencies.

    s_xy : (..., 2) spatial frequencies (sx, sy) in Å⁻¹
    per-particle parameters : (B,) tensors (or floats); defocus in Å, angle in degrees
    returns : (B, ...) real CTF values, |CTF| clamped to ≥ 1e−8 as RELION does
    """
    dtype = s_xy.dtype
    lam = electron_wavelength_angstrom(optics.voltage_kv)
    k1 = math.pi * lam
    k2 = math.pi / 2 * optics.cs_mm * 1e7 * lam**3
    q0 = optics.amplitude_contrast
    k3 = math.atan(q0 / math.sqrt(1 - q0 * q0))

    def per_particle(v: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(v, device=s_xy.device).to(dtype).reshape(-1)
        return t.reshape(-1, *([1] * (s_xy.dim() - 1)))

    du, dv = per_particle(defocus_u_angstrom), per_particle(defocus_v_angstrom)
    ang = torch.deg2rad(per_particle(defocus_angle_deg))
    sx, sy = s_xy[..., 0], s_xy[..., 1]
    s2 = sx * sx + sy * sy
    along_u = sx * torch.cos(ang) + sy * torch.sin(ang)
    along_v = -sx * torch.sin(ang) + sy * torch.cos(ang)
    defocus_s2 = du * along_u**2 + dv * along_v**2  # Δf(θ)·|s|²
    gamma = -k1 * defocus_s2 + k2 * s2 * s2 - torch.deg2rad(per_particle(phase_shift_deg)) - k3
    ctf = per_particle(scale) * -torch.sin(gamma) * torch.exp(-per_particle(bfactor_a2) / 4 * s2)
    tiny = torch.tensor(1e-8, dtype=dtype, device=ctf.device)
    return torch.where(ctf.abs() < 1e-8, torch.where(ctf < 0, -tiny, tiny), ctf)


def ctf_2d(box: int, pixel_size: float, **params) -> torch.Tensor:
    """CTF on the (N, N//2+1) half-transform grid (FFTW order, Nyquist +N/2) → (B, N, N//2+1).

    Keyword arguments are those of `ctf_from_frequencies`; `device` picks the device.
    """
    device = params.pop("device", None)
    dtype = params.pop("dtype", torch.float32)
    s = rfft_frequencies_2d(box, device=device).to(dtype) / (box * pixel_size)
    return ctf_from_frequencies(s, **params)


def particle_ctfs(dataset, indices, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """CTFs (B, N, N//2+1) of particles `indices` of a `ParticleDataSet` (RELION columns)."""
    o = dataset.optics
    optics = CtfOptics(o.voltage_kv, o.cs_mm, o.amplitude_contrast)

    def col(name: str, default: float) -> torch.Tensor:
        return torch.as_tensor(dataset.column(name, default)[indices], dtype=torch.float64)

    return ctf_2d(
        dataset.box,
        dataset.pixel_size,
        optics=optics,
        device=device,
        dtype=dtype,
        defocus_u_angstrom=col("rlnDefocusU", 0.0),
        defocus_v_angstrom=col("rlnDefocusV", 0.0),
        defocus_angle_deg=col("rlnDefocusAngle", 0.0),
        bfactor_a2=col("rlnCtfBfactor", 0.0),
        phase_shift_deg=col("rlnPhaseShift", 0.0),
        scale=col("rlnCtfScalefactor", 1.0),
    )
