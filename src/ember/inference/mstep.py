"""M-step: turn one E-step's sums into a new model (ALGORITHM §5.3–5.5).

τ² comes from a policy: `GoldStandardTau2` (auto-refine: from the half-set FSC) or
`ReferencePowerTau2` (classification: the power of the current references, §5.4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ember.inference.images import FrequencyWindow, npix_per_shell, prepare_batch
from ember.inference.model import Model, Sums
from ember.operators.masks import soft_sphere
from ember.operators.projector import Projector
from ember.operators.reconstructor import Reconstructor, half_set_fsc, tau2_from_fsc

MIN_SIGMA2_OFFSET = 2.0  # Å², RELION --min_sigma2_offset


def unregularised_fsc(first: Reconstructor, second: Reconstructor) -> torch.Tensor:
    """Gold-standard FSC of the halves' data/weight averages, before solvent flattening; 0 beyond
    the shells the E-step filled (ALGORITHM §5.4)."""
    return half_set_fsc(first, second)


def solvent_mask(box: int, radius_px: float, edge_px: float = 5.0, ndim: int = 3) -> torch.Tensor:
    """Soft sphere (disc in 2D): 1 inside radius, raised cosine over `edge_px`, 0 beyond (§5.8)."""
    return soft_sphere(box, radius_px, edge_px, ndim=ndim)


@dataclass
class GoldStandardTau2:
    """Auto-refine: SSNR = T·FSC'/(1 − FSC') from the half-set FSC (S,), τ² = SSNR·σ²_ref; the
    joined final map uses FSC' = √(2FSC/(1+FSC)) (§5.4)."""

    fsc: torch.Tensor
    tau2_fudge: float = 1.0
    joined: bool = False

    def __call__(self, k: int, rec: Reconstructor) -> tuple[torch.Tensor, torch.Tensor]:
        """τ² (S,) and data_vs_prior SSNR (S,) for class k."""
        f = self.fsc.clamp(0.001, 0.999)
        if self.joined:
            f = torch.sqrt(2 * f / (1 + f)).clamp(max=0.999)
        tau2 = tau2_from_fsc(self.fsc, rec.sigma2_ref(), tau2_fudge=self.tau2_fudge, joined=self.joined)
        return tau2, self.tau2_fudge * f / (1 - f)


@dataclass
class ReferencePowerTau2:
    """Classification: τ²_k = the power spectrum of reference k in the padded map (`reference_tau2`);
    data_vs_prior = shell average of ω·T·τ²·weight (§5.4)."""

    tau2: torch.Tensor  # (K, S)
    tau2_fudge: float = 1.0

    def __call__(self, k: int, rec: Reconstructor) -> tuple[torch.Tensor, torch.Tensor]:
        s2 = rec.sigma2_ref()
        ssnr = torch.where(s2 > 0, self.tau2_fudge * self.tau2[k] / s2.clamp(min=1e-300), torch.zeros_like(s2))
        return self.tau2[k], ssnr


def reference_tau2(projector: Projector) -> torch.Tensor:
    """τ²(i) = mean over padded voxels in model shell i of |V̂|²/2 (2D-image scale) → (S,)
    (RELION `MlModel::setFourierTransformMaps`); a 2D reference's padded pixels likewise."""
    spec = projector.spectrum
    size = spec.shape[1] - 1
    y = torch.arange(size + 1, dtype=torch.float64) - size // 2
    z = y if spec.shape[0] > 1 else torch.zeros(1, dtype=torch.float64)  # a 2D reference: one plane
    x = torch.arange(size // 2 + 1, dtype=torch.float64)
    gz, gy, gx = torch.meshgrid(z, y, x, indexing="ij")
    r = torch.sqrt(gx**2 + gy**2 + gz**2) / projector.pad
    keep_z = slice(None, -1) if spec.shape[0] > 1 else slice(None)
    shells = torch.floor(r + 0.5).long()[keep_z, :-1].reshape(-1)
    power = (spec.abs().double() ** 2 / 2)[keep_z, :-1].reshape(-1)
    n_shells = projector.box // 2 + 1
    keep = shells < n_shells
    total = torch.zeros(n_shells, dtype=torch.float64).index_add_(0, shells[keep], power[keep])
    count = torch.bincount(shells[keep], minlength=n_shells).double()
    return total / count.clamp(min=1)


def initial_data_vs_prior(tau2: torch.Tensor, sigma2_noise: torch.Tensor, group_counts: np.ndarray,
                          class_prior: np.ndarray, tau2_fudge: float) -> torch.Tensor:
    """The data_vs_prior (SSNR) of 3D starting references (K, S), S = sigma2_noise's shells: the
    evidence n·π_k/⟨σ²⟩ (σ² (G, S) averaged with the particle counts (G,) of each optics group;
    divided by 2i in shell i > 0, RELION's ratio of 3D to 2D shell pixels) times the prior T·τ²_k
    (τ² (K, S') from `reference_tau2`); σ² and τ² per complex component on the 2D-image scale —
    RELION `MlModel::initialiseDataVersusPrior`, which picks the shells of iteration 1's intensity
    scale correction (data_vs_prior > 3)."""
    counts = torch.as_tensor(np.asarray(group_counts, dtype=np.float64))
    avg_sigma2 = (counts[:, None] * sigma2_noise).sum(dim=0) / counts.sum()
    evidence = counts.sum() * torch.as_tensor(np.asarray(class_prior, dtype=np.float64))[:, None] \
        / avg_sigma2.clamp(min=1e-300)
    shell = torch.arange(sigma2_noise.shape[-1], dtype=torch.float64)
    evidence = evidence / torch.where(shell > 0, 2 * shell, torch.ones_like(shell))
    n = min(tau2.shape[-1], evidence.shape[-1])
    ssnr = torch.zeros_like(evidence)
    ssnr[:, :n] = evidence[:, :n] * tau2_fudge * tau2[:, :n]
    return ssnr


def update_sigma2(sums: Sums, previous: torch.Tensor, group_boxes: list[int] | None = None) -> torch.Tensor:
    """σ²_g(i) = Σγ|residual|²_i / (2·Σγ·Npix_g(i)) per optics group (G, S), Npix_g on each group's
    own image grid (`group_boxes`, default N = 2S − 2 for all); tiny values take the previous
    shell's value; a group without images keeps its previous spectrum."""
    npix = _npix_per_group(group_boxes or [previous.shape[-1] * 2 - 2] * len(previous), previous.shape[-1])
    sigma2 = sums.sigma2 / (2 * sums.n_images.clamp(min=1e-12)[:, None] * npix.clamp(min=1))
    for i in range(1, sigma2.shape[1]):
        tiny = sigma2[:, i] < 1e-14
        sigma2[tiny, i] = sigma2[tiny, i - 1]
    sigma2[:, 0] = torch.where(sigma2[:, 0] < 1e-14, previous[:, 0], sigma2[:, 0])
    return torch.where((sums.n_images > 0)[:, None], sigma2, previous)


def _npix_per_group(boxes: list[int], n_shells: int) -> torch.Tensor:
    """(G, S) unique half-transform pixels per shell of each group's N_g grid (0 beyond N_g/2)."""
    out = torch.zeros((len(boxes), n_shells), dtype=torch.float64)
    for g, box in enumerate(boxes):
        out[g, : box // 2 + 1] = npix_per_shell(box)[:n_shells]
    return out


def maximise(
    model: Model,
    sums: Sums,
    tau2_policy: GoldStandardTau2 | ReferencePowerTau2,
    *,
    symmetry: torch.Tensor,
    mask_radius_px: float | None,
    fsc: torch.Tensor | None = None,
    update_noise: bool = True,
    fix_sigma_offset: bool = False,
    update_scale: bool = False,
    group_boxes: list[int] | None = None,
    gridding_iterations: int = 0,
) -> Model:
    """New references (Wiener filter with τ² from the policy), σ², σ_offset, pdf_direction, π_k and
    (with `update_scale`) the intensity scale of each group; `group_boxes` : each optics group's
    image box when they differ; `gridding_iterations` > 0: RELION 3.1's iterative gridding."""
    refs, tau2s, ssnrs, complete = [], [], [], []
    for k, rec in enumerate(sums.reconstructors):
        rec.prepare(symmetry)
        tau2, ssnr = tau2_policy(k, rec)
        volume = rec.reconstruct(tau2=tau2, tau2_fudge=tau2_policy.tau2_fudge,
                                 gridding_iterations=gridding_iterations).double()
        if mask_radius_px is not None:
            volume = volume * solvent_mask(volume.shape[0], mask_radius_px, ndim=volume.ndim)
        refs.append(volume)
        tau2s.append(tau2)
        ssnrs.append(ssnr)
        complete.append(rec.completeness(tau2, tau2_policy.tau2_fudge))
    n_img = float(sums.n_images.sum())
    sigma2 = update_sigma2(sums, model.sigma2_noise, group_boxes) if update_noise and n_img > 0 else model.sigma2_noise
    sigma_off = model.sigma_offset_angstrom
    if not fix_sigma_offset and n_img > 0:
        sigma_off = float(np.sqrt(max(sums.offset_sq / (2 * n_img), MIN_SIGMA2_OFFSET)))
    pdf = sums.pdf_direction / np.maximum(sums.pdf_direction.sum(axis=1, keepdims=True), 1e-300)
    total = sums.class_weight.sum()
    prior = sums.class_weight / total if total > 0 else model.class_prior
    fsc_k = model.fsc if fsc is None else fsc[None].expand(len(refs), -1).clone()
    scale = group_scales(sums, model.scale) if update_scale else model.scale
    return Model(refs, sigma2, torch.stack(tau2s), fsc_k, torch.stack(ssnrs), sigma_off, pdf, prior, model.rho,
                 torch.stack(complete), scale, model.avg_norm)


def group_scales(sums: Sums, previous: np.ndarray) -> np.ndarray:
    """s_g = Σγ Re(conj(CV̂)X) / Σγ|CV̂|² per intensity-scale group, clipped to [median/5, 5·median]
    and divided by the particle-weighted mean (RELION `maximizationOtherParameters`); unchanged
    with one group or before any shell has data_vs_prior > 3."""
    if len(previous) < 2 or not (sums.reference_power > 0).any():
        return previous
    scale = np.where(sums.reference_power > 0, sums.signal_product / np.maximum(sums.reference_power, 1e-300), 1.0)
    median = np.sort(scale)[len(scale) // 2]
    scale = np.clip(scale, median / 5, 5 * median)
    weight = sums.scale_weight
    return scale / ((weight * scale).sum() / weight.sum()) if weight.sum() > 0 else scale


def norm_corrections(old: np.ndarray, residual_power: np.ndarray, avg_norm: float) -> np.ndarray:
    """New per-particle norm corrections (n,): (old/avg_norm)·√(2·Σγ|s·C·V̂ − X|²), the residual's
    real-space standard deviation on the forward-normalised FFT scale (RELION `storeWeightedSums`)."""
    return old / avg_norm * np.sqrt(2 * np.maximum(residual_power, 0))


def initial_sigma2(dataset, indices: np.ndarray, mask_radius_px: float) -> torch.Tensor:
    """σ²_g(i) = ⟨|X|²⟩_shell/2 − |⟨X⟩|²_shell/2 over masked particles `indices` of each optics
    group g (ALGORITHM §4.8), each on its own image grid → (G, S), S the largest group's N_g/2+1;
    a group without particles among `indices` gets the mean. `mask_radius_px` in pixels of the
    first group."""
    n_groups = dataset.n_optics_groups
    group = torch.from_numpy(dataset.optics_group_index()).long()
    boxes = [o.box for o in dataset.optics_groups]
    sigma2 = torch.zeros((n_groups, max(boxes) // 2 + 1), dtype=torch.float64)
    zero = np.zeros((len(dataset), 2))
    n = torch.bincount(group[indices], minlength=n_groups).double()
    for box, pixel, rows in dataset.size_classes(indices):
        win = FrequencyWindow.build(box, box)
        power = torch.zeros((n_groups, len(win.index)), dtype=torch.float64)
        mean = torch.zeros((n_groups, len(win.index)), dtype=torch.complex128)
        for start in range(0, len(rows), 256):
            idx = rows[start : start + 256]
            x = prepare_batch(dataset, idx, zero[idx], mask_radius_px=mask_radius_px * dataset.pixel_size / pixel,
                              use_ctf=False).masked
            x = x.reshape(len(idx), -1)[:, win.index]
            power.index_add_(0, group[idx], x.abs() ** 2)
            mean.index_add_(0, group[idx], x)
        per_pixel = (power / n.clamp(min=1)[:, None] - (mean / n.clamp(min=1)[:, None]).abs() ** 2) / 2
        mine = torch.unique(group[rows])
        shells = torch.zeros((n_groups, box // 2 + 1), dtype=torch.float64).index_add_(1, win.shell, per_pixel)
        sigma2[mine, : box // 2 + 1] = shells[mine] / npix_per_shell(box)
    for i in range(1, sigma2.shape[1]):
        bad = sigma2[:, i] <= 0
        sigma2[bad, i] = sigma2[bad, i - 1]
    empty = n == 0
    if empty.any():
        sigma2[empty] = sigma2[~empty].mean(dim=0)
    return sigma2


def first_per_group(dataset, limit: int = 1000) -> np.ndarray:
    """Indices of the first `limit` particles of each optics group (RELION nr_parts_sigma2noise)."""
    group = dataset.optics_group_index()
    return np.sort(np.concatenate([np.flatnonzero(group == g)[:limit] for g in range(dataset.n_optics_groups)]))
