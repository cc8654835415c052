"""Model state (what an iteration estimates) and weighted sums (what one E-step accumulates),
after RELION's `MlModel` / `MlWsumModel`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ember.operators.reconstructor import Reconstructor


@dataclass
class HalfModel:
    """One independent model (a half-set in gold-standard refinement).

    reference : (N, N, N) float64 map; sigma2_noise, tau2, fsc, ssnr : (N//2+1,) float64 per shell
    (σ², τ² per complex component, 2D-image scale); sigma_offset_angstrom : σ of the offset prior;
    pdf_direction : (n_dirs,) prior over the sampled directions; rho : sampling perturbation.
    """

    reference: torch.Tensor
    sigma2_noise: torch.Tensor
    tau2: torch.Tensor
    fsc: torch.Tensor
    ssnr: torch.Tensor
    sigma_offset_angstrom: float
    pdf_direction: np.ndarray
    rho: float = 0.0


@dataclass
class SamplingState:
    """The current sampling: HEALPix order (coarse), oversampling order, translations (px),
    local-search σ (degrees, None = global), directions kept (asymmetric unit indices)."""

    healpix_order: int
    oversampling: int
    offset_range_px: float
    offset_step_px: float
    directions: np.ndarray
    sigma_ang_deg: float | None = None


@dataclass
class Sums:
    """Sufficient statistics of one E-step over one half (per iteration)."""

    reconstructor: Reconstructor
    sigma2: torch.Tensor  # (N//2+1,) Σγ|residual|² per shell
    n_images: float = 0.0  # Σγ over images (≈ number of images)
    offset_sq: float = 0.0  # Σγ |t − prior|² in Å²
    pdf_direction: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loglik: float = 0.0


@dataclass
class ParticleResults:
    """Per-particle outputs of an E-step (arrays over all particles, filled by index)."""

    angles: np.ndarray  # (n, 3) degrees
    offsets_px: np.ndarray  # (n, 2) RELION origin in px
    pmax: np.ndarray
    n_significant: np.ndarray
    loglik: np.ndarray

    @classmethod
    def empty(cls, n: int) -> ParticleResults:
        return cls(np.zeros((n, 3)), np.zeros((n, 2)), np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n))
