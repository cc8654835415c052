"""M-step: turn one E-step's sums into a new model (ALGORITHM §5.3–5.5)."""

from __future__ import annotations

import numpy as np
import torch

from ember.inference.images import FrequencyWindow, npix_per_shell, prepare_batch
from ember.inference.model import HalfModel, Sums
from ember.operators.masks import soft_sphere
from ember.operators.reconstructor import Reconstructor, half_set_fsc, tau2_from_fsc

MIN_SIGMA2_OFFSET = 2.0  # Å², RELION --min_sigma2_offset


def new_sums(box: int, n_directions: int, *, pad: int = 2, r_max: int | None = None) -> Sums:
    return Sums(Reconstructor(box, pad=pad, r_max=r_max), torch.zeros(box // 2 + 1, dtype=torch.float64),
                pdf_direction=np.zeros(n_directions))


def unregularised_fsc(first: Reconstructor, second: Reconstructor) -> torch.Tensor:
    """Gold-standard FSC of the halves' data/weight averages, before solvent flattening; 0 beyond
    the shells the E-step filled (ALGORITHM §5.4)."""
    return half_set_fsc(first, second)


def solvent_mask(box: int, radius_px: float, edge_px: float = 5.0) -> torch.Tensor:
    """Soft sphere: 1 inside radius, raised cosine over `edge_px`, 0 beyond (§5.8)."""
    return soft_sphere(box, radius_px, edge_px)


def update_sigma2(sums: Sums, previous: torch.Tensor) -> torch.Tensor:
    """σ²(i) = Σγ|residual|²_i / (2·Σγ·Npix(i)); tiny values take the previous shell's value."""
    npix = npix_per_shell(len(previous) * 2 - 2)
    sigma2 = sums.sigma2 / (2 * max(sums.n_images, 1e-12) * npix.clamp(min=1))
    for i in range(1, len(sigma2)):
        if sigma2[i] < 1e-14:
            sigma2[i] = sigma2[i - 1]
    if sigma2[0] < 1e-14:
        sigma2[0] = previous[0]
    return sigma2


def maximise(
    model: HalfModel,
    sums: Sums,
    half_fsc: torch.Tensor,
    *,
    tau2_fudge: float,
    symmetry: torch.Tensor,
    mask_radius_px: float | None,
    joined: bool = False,
    update_noise: bool = True,
    fix_sigma_offset: bool = False,
) -> HalfModel:
    """New reference (Wiener with τ² from the gold-standard FSC), σ², σ_offset and pdf_direction."""
    rec = sums.reconstructor
    rec.prepare(symmetry)
    tau2 = tau2_from_fsc(half_fsc, rec.sigma2_ref(), tau2_fudge=tau2_fudge, joined=joined)
    volume = rec.reconstruct(tau2=tau2, tau2_fudge=tau2_fudge).double()
    if mask_radius_px is not None:
        volume = volume * solvent_mask(volume.shape[0], mask_radius_px)
    f = half_fsc.clamp(0.001, 0.999)
    if joined:
        f = torch.sqrt(2 * f / (1 + f)).clamp(max=0.999)
    sigma2 = update_sigma2(sums, model.sigma2_noise) if update_noise and sums.n_images > 0 else model.sigma2_noise
    sigma_off = model.sigma_offset_angstrom
    if not fix_sigma_offset and sums.n_images > 0:
        sigma_off = float(np.sqrt(max(sums.offset_sq / (2 * sums.n_images), MIN_SIGMA2_OFFSET)))
    pdf = sums.pdf_direction / max(sums.pdf_direction.sum(), 1e-300)
    return HalfModel(volume, sigma2, tau2, half_fsc, tau2_fudge * f / (1 - f), sigma_off, pdf, model.rho)


def initial_sigma2(dataset, indices: np.ndarray, mask_radius_px: float) -> torch.Tensor:
    """σ²(i) = ⟨|X|²⟩_shell/2 − |⟨X⟩|²_shell/2 over masked particles (ALGORITHM §4.8)."""
    box = dataset.box
    win = FrequencyWindow.build(box, box)
    power = torch.zeros(len(win.index), dtype=torch.float64)
    mean = torch.zeros(len(win.index), dtype=torch.complex128)
    zero = np.zeros((len(dataset), 2))
    for start in range(0, len(indices), 256):
        idx = indices[start : start + 256]
        x = prepare_batch(dataset, idx, zero[idx], mask_radius_px=mask_radius_px, use_ctf=False).masked
        x = x.reshape(len(idx), -1)[:, win.index]
        power += (x.abs() ** 2).sum(0)
        mean += x.sum(0)
    n = len(indices)
    per_pixel = power / n / 2 - (mean / n).abs() ** 2 / 2
    npix = npix_per_shell(box)
    sigma2 = torch.zeros(box // 2 + 1, dtype=torch.float64).index_add_(0, win.shell, per_pixel) / npix
    for i in range(1, len(sigma2)):
        if sigma2[i] <= 0:
            sigma2[i] = sigma2[i - 1]
    return sigma2
