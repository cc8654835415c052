"""Model state (what an iteration estimates) and weighted sums (what one E-step accumulates),
after RELION's `MlModel` / `MlWsumModel`. K classes, G optics groups, S = N//2+1 shells."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from ember.operators.reconstructor import Reconstructor
from ember.parallel import Ranks


@dataclass
class Model:
    """One independent model (a half-set in gold-standard refinement; all data in classification).

    references : K maps (N, N, N) float64; sigma2_noise : (G, S) per optics group; tau2, fsc, ssnr :
    (K, S) per class (σ², τ² per complex component, 2D-image scale); sigma_offset_angstrom : σ of
    the offset prior (Å); pdf_direction : (K, n_dirs) prior over the sampled directions;
    class_prior : (K,) π_k; rho : sampling perturbation; completeness : (K, S) fraction of the
    voxels of each shell with data_vs_prior ≥ 1 (RELION rlnFourierCompleteness), when known;
    scale : (n_scale_groups,) intensity scale s_g per rlnGroupNumber; avg_norm : mean norm correction;
    pad : Fourier padding factor of the projections and back-projections (RELION `--pad`).
    """

    references: list[torch.Tensor]
    sigma2_noise: torch.Tensor
    tau2: torch.Tensor
    fsc: torch.Tensor
    ssnr: torch.Tensor
    sigma_offset_angstrom: float
    pdf_direction: np.ndarray
    class_prior: np.ndarray
    rho: float = 0.0
    completeness: torch.Tensor | None = None
    scale: np.ndarray = field(default_factory=lambda: np.ones(1))
    avg_norm: float = 1.0
    pad: int = 2

    @property
    def n_classes(self) -> int:
        return len(self.references)

    def to(self, device: torch.device) -> Model:
        """This model with its maps and spectra on `device` (itself when they are there already)."""
        if self.sigma2_noise.device == torch.device(device):
            return self
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)
        return dataclasses.replace(self, references=[r.to(device) for r in self.references],
                                   sigma2_noise=move(self.sigma2_noise), tau2=move(self.tau2), fsc=move(self.fsc),
                                   ssnr=move(self.ssnr), completeness=move(self.completeness))

    @classmethod
    def initial(cls, references: list[torch.Tensor], sigma2_noise: torch.Tensor, sigma_offset_angstrom: float,
                pdf_direction: np.ndarray, n_scale_groups: int = 1, pad: int = 2) -> Model:
        """Start: uniform class priors, τ² = FSC = SSNR = 0, scales 1; pdf_direction (n_dirs,) shared
        by the classes."""
        k, shells = len(references), sigma2_noise.shape[-1]
        zeros = torch.zeros((k, shells), dtype=torch.float64)
        return cls([r.clone() for r in references], sigma2_noise.clone(), zeros.clone(), zeros.clone(), zeros.clone(),
                   sigma_offset_angstrom, np.tile(pdf_direction, (k, 1)), np.full(k, 1.0 / k),
                   scale=np.ones(n_scale_groups), pad=pad)


@dataclass
class SamplingState:
    """The current sampling: HEALPix order (coarse), oversampling order, translations (px),
    local-search σ (degrees, None = global), directions kept (asymmetric unit indices); with
    `psi_step_deg` the references are 2D and the orientations in-plane rotations only."""

    healpix_order: int
    oversampling: int
    offset_range_px: float
    offset_step_px: float
    directions: np.ndarray
    sigma_ang_deg: float | None = None
    psi_step_deg: float | None = None  # 2D references: in-plane rotations at this coarse step


@dataclass
class Sums:
    """Sufficient statistics of one E-step over one model (per iteration).

    reconstructors : one per class; sigma2 : (G, S) Σγ|residual|² per optics group and shell;
    n_images : (G,) Σγ per optics group; offset_sq : Σγ|t − prior|² (Å²); pdf_direction : (K, n_dirs);
    class_weight : (K,) Σγ per class; loglik : Σ log-likelihood contributions; signal_product,
    reference_power, scale_weight : (n_scale_groups,) Σγ Re(conj(CV̂)X), Σγ|CV̂|² over shells with
    data_vs_prior > 3 and Σγ, per intensity-scale group (ALGORITHM §5.6).
    """

    reconstructors: list[Reconstructor]
    sigma2: torch.Tensor
    n_images: torch.Tensor
    pdf_direction: np.ndarray
    class_weight: np.ndarray
    offset_sq: float = 0.0
    loglik: float = 0.0
    signal_product: np.ndarray = field(default_factory=lambda: np.zeros(1))
    reference_power: np.ndarray = field(default_factory=lambda: np.zeros(1))
    scale_weight: np.ndarray = field(default_factory=lambda: np.zeros(1))

    @classmethod
    def empty(cls, box: int, n_classes: int, n_groups: int, n_directions: int, *, pad: int = 2,
              r_max: int | None = None, n_scale_groups: int = 1, ndim: int = 3, n_shells: int | None = None) -> Sums:
        """Zero sums; σ² over `n_shells` (default N/2+1; the largest optics group's N_g/2+1 when
        groups have other boxes)."""
        return cls([Reconstructor(box, pad=pad, r_max=r_max, ndim=ndim) for _ in range(n_classes)],
                   torch.zeros((n_groups, n_shells or box // 2 + 1), dtype=torch.float64),
                   torch.zeros(n_groups, dtype=torch.float64), np.zeros((n_classes, n_directions)),
                   np.zeros(n_classes), signal_product=np.zeros(n_scale_groups),
                   reference_power=np.zeros(n_scale_groups), scale_weight=np.zeros(n_scale_groups))

    @property
    def device(self) -> torch.device:
        return self.sigma2.device

    def zeros_on(self, device: torch.device) -> Sums:
        """Zero statistics of the same shapes with the reconstructors and σ² sums on `device`."""
        recs = [Reconstructor(r.box, pad=r.pad, r_max=r.r_max, ndim=r.ndim, device=device) for r in self.reconstructors]
        return Sums(recs, torch.zeros_like(self.sigma2, device=device), torch.zeros_like(self.n_images, device=device),
                    np.zeros_like(self.pdf_direction), np.zeros_like(self.class_weight),
                    signal_product=np.zeros_like(self.signal_product),
                    reference_power=np.zeros_like(self.reference_power), scale_weight=np.zeros_like(self.scale_weight))

    def add_(self, other: Sums) -> None:
        """Add the statistics of `other` (same shapes, any device) into these, in place."""
        for mine, theirs in zip(self.reconstructors, other.reconstructors, strict=True):
            mine.add(theirs)
        self.sigma2 += other.sigma2.to(self.device)
        self.n_images += other.n_images.to(self.device)
        self.pdf_direction += other.pdf_direction
        self.class_weight += other.class_weight
        self.offset_sq += other.offset_sq
        self.loglik += other.loglik
        self.signal_product += other.signal_product
        self.reference_power += other.reference_power
        self.scale_weight += other.scale_weight

    def all_reduce(self, ranks: Ranks) -> None:
        """Sum these statistics over the ranks (each rank saw a share of the particles), in place."""
        if ranks.size == 1:
            return
        scalars = np.array([self.offset_sq, self.loglik])
        ranks.add(*(r.sums for r in self.reconstructors), self.sigma2, self.n_images, self.pdf_direction,
                  self.class_weight, self.signal_product, self.reference_power, self.scale_weight, scalars)
        self.offset_sq, self.loglik = float(scalars[0]), float(scalars[1])

    def add_class(self, k: int, other: Sums) -> None:
        """Add the statistics of a single-class E-step (`other`, K = 1, whose reconstructor is this
        one's class k) as class k, in place."""
        self.sigma2 += other.sigma2
        self.n_images += other.n_images
        self.pdf_direction[k] += other.pdf_direction[0]
        self.class_weight[k] += other.class_weight[0]
        self.offset_sq += other.offset_sq
        self.loglik += other.loglik
        self.signal_product += other.signal_product
        self.reference_power += other.reference_power
        self.scale_weight += other.scale_weight

    def __add__(self, other: Sums) -> Sums:
        """Statistics of both (reconstructors: the caller joins them; σ², counts and pdfs add)."""
        return Sums(self.reconstructors, self.sigma2 + other.sigma2, self.n_images + other.n_images,
                    self.pdf_direction + other.pdf_direction, self.class_weight + other.class_weight,
                    self.offset_sq + other.offset_sq, self.loglik + other.loglik,
                    self.signal_product + other.signal_product, self.reference_power + other.reference_power,
                    self.scale_weight + other.scale_weight)


@dataclass
class ParticleResults:
    """Per-particle outputs of an E-step (arrays over all particles, filled by index).

    angles : (n, 3) degrees; offsets_px : (n, 2) RELION origin in px; classes : (n,) 0-based best
    class; class_posterior : (n, K); pmax, loglik : (n,); n_significant : (n,) int;
    residual_power : (n,) Σγ|s·C·V̂ − X|² over the whole half transform (window pixels, DC included,
    plus the image power beyond the window), from which the norm correction follows (§5.6).
    """

    angles: np.ndarray
    offsets_px: np.ndarray
    classes: np.ndarray
    class_posterior: np.ndarray
    pmax: np.ndarray
    n_significant: np.ndarray
    loglik: np.ndarray
    residual_power: np.ndarray

    def all_reduce(self, ranks: Ranks, rows: np.ndarray) -> None:
        """Gather every rank's particles: this rank filled `rows`, the others the rest."""
        if ranks.size == 1:
            return
        mine = np.zeros(len(self.pmax), dtype=bool)
        mine[rows] = True
        for a in (self.angles, self.offsets_px, self.classes, self.class_posterior, self.pmax, self.n_significant,
                  self.loglik, self.residual_power):
            shape = (-1,) + (1,) * (a.ndim - 1)
            a[:] = np.where(mine.reshape(shape), a, 0)
            ranks.add(a)

    @classmethod
    def empty(cls, n: int, n_classes: int = 1) -> ParticleResults:
        return cls(np.zeros((n, 3)), np.zeros((n, 2)), np.zeros(n, dtype=np.int64), np.zeros((n, n_classes)),
                   np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n))
