"""The contrast transfer function with RELION's conventions (`src/ctf.h`, `CTF::getCTF`).

CTF(s) = S · (−sin γ(s)) · exp(−B s²/4),  γ = −πλΔf(θ)s² + (π/2)Cs λ³ s⁴ − φ − atan(Q0/√(1−Q0²)),
Δf(θ) = ΔfU cos²(θ−α) + ΔfV sin²(θ−α). Positive defocus = underfocus; CTF(0) = +Q0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ember.errors import EmberInputError
from ember.maths.fourier import rfft_frequencies_2d


def electron_wavelength_angstrom(voltage_kv: float | torch.Tensor) -> float | torch.Tensor:
    """Relativistic electron wavelength λ in Å for an acceleration voltage in kV (float or tensor)."""
    v = voltage_kv * 1e3
    if isinstance(v, torch.Tensor):
        return 12.2643247 / torch.sqrt(v * (1 + 0.978466e-6 * v))
    return 12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v))


@dataclass(frozen=True)
class CtfOptics:
    """CTF constants: voltage (kV), Cs (mm), amplitude contrast Q0. Each is a float (one optics
    group for the whole batch) or a (B,) tensor (per particle, e.g. from `particle_optics`)."""

    voltage_kv: float | torch.Tensor = 300.0
    cs_mm: float | torch.Tensor = 2.7
    amplitude_contrast: float | torch.Tensor = 0.1


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
    optics : one group's constants (floats) or per-particle (B,) tensors
    per-particle parameters : (B,) tensors (or floats); defocus in Å, angle in degrees
    returns : (B, ...) real CTF values, |CTF| clamped to ≥ 1e−8 as RELION does
    """
    dtype = s_xy.dtype

    def per_particle(v: torch.Tensor | float, as_dtype: torch.dtype = dtype) -> torch.Tensor:
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.float64)  # floats stay exact
        t = t.to(device=s_xy.device, dtype=as_dtype).reshape(-1)
        return t.reshape(-1, *([1] * (s_xy.dim() - 1)))

    # optics constants in float64 (as RELION), then cast
    lam = electron_wavelength_angstrom(per_particle(optics.voltage_kv, torch.float64))
    k1 = (math.pi * lam).to(dtype)
    k2 = (math.pi / 2 * per_particle(optics.cs_mm, torch.float64) * 1e7 * lam**3).to(dtype)
    q0 = per_particle(optics.amplitude_contrast, torch.float64)
    k3 = torch.atan(q0 / torch.sqrt(1 - q0 * q0)).to(dtype)

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


def particle_optics(dataset, indices) -> CtfOptics:
    """CtfOptics of (B,) float64 tensors: each particle's optics-group voltage, Cs and Q0."""
    group = dataset.optics_group_index()[indices]

    def per_group(field: str) -> torch.Tensor:
        values = [getattr(o, field) for o in dataset.optics_groups]
        return torch.as_tensor(values, dtype=torch.float64)[torch.as_tensor(group)]

    return CtfOptics(per_group("voltage_kv"), per_group("cs_mm"), per_group("amplitude_contrast"))


def particle_ctfs(dataset, indices, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """CTFs (B, N, N//2+1) of particles `indices` of a `ParticleDataSet` (RELION columns), each
    with its own optics group's voltage, Cs, amplitude contrast and pixel size (N: their groups' box,
    one for all `indices`)."""
    if not dataset.has_ctf:
        raise EmberInputError(dataset.star_path, "the particles have no rlnDefocusU/V columns", "add CTF parameters")
    indices = np.asarray(indices, dtype=np.int64)
    optics = particle_optics(dataset, indices)
    group = dataset.optics_group_index()[indices]
    boxes = {dataset.optics_groups[g].box for g in group.tolist()}
    if len(boxes) > 1:
        raise ValueError(f"CTFs of optics groups with different boxes {sorted(boxes)} asked together")
    box = boxes.pop() if boxes else dataset.box

    def col(name: str, default: float) -> torch.Tensor:
        return torch.as_tensor(dataset.column(name, default)[indices], dtype=torch.float64)

    params = {
        "defocus_u_angstrom": col("rlnDefocusU", 0.0),
        "defocus_v_angstrom": col("rlnDefocusV", 0.0),
        "defocus_angle_deg": col("rlnDefocusAngle", 0.0),
        "bfactor_a2": col("rlnCtfBfactor", 0.0),
        "phase_shift_deg": col("rlnPhaseShift", 0.0),
        "scale": col("rlnCtfScalefactor", 1.0),
    }
    out = torch.empty((len(indices), box, box // 2 + 1), dtype=dtype, device=device)
    for g in np.unique(group):  # one pixel size per call of ctf_2d
        rows = torch.as_tensor(np.flatnonzero(group == g))
        constants = (optics.voltage_kv[rows], optics.cs_mm[rows], optics.amplitude_contrast[rows])
        out[rows.to(out.device)] = ctf_2d(
            box,
            dataset.optics_groups[g].pixel_size,
            optics=CtfOptics(*constants),
            device=device,
            dtype=dtype,
            **{k: v[rows] for k, v in params.items()},
        )
    return out
