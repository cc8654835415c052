"""The likelihood engine (E-step) shared by refinement and classification (ALGORITHM §4–5.1).

A hidden-variable row is a (class k, orientation A) pair with log prior log π_k + log p(A); for a
batch of B images, T translations and R rows
diff2[b,t,r] = Σ_k w_b|C_b P_r|² + Σ_k w_b|X_b|² − 2·Re Σ_k conj(shift(X_b, t))·w_b·C_b·P_r,
w_b = 1/(2σ²_g(b)) for the image's optics group g, the cross term being one real GEMM
(B·T × 2K) @ (2K × R) over the projections of all classes. Pass 1 scores the coarse grid at the
coarse window; pass 2 scores the oversampled children of each image's significant coarse samples
at the full window, either densely (a GEMM over the whole fine grid, masked: cheap when posteriors
are broad) or sparsely (small products over the significant samples only); both share one
weighting (`Marginalisation` or `CrossCorrelation`), one normalisation and one record of the
per-particle results. The significant pass-2 samples are accumulated into each class's
reconstructor, the σ² sums per optics group, the offset, direction and class statistics.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ember.inference.images import FrequencyWindow, ImageBatch
from ember.inference.model import Model, ParticleResults, Sums
from ember.inference.sampling import OrientationGrid, oversampled_children, translation_children
from ember.maths.rotations import matrix_to_euler
from ember.operators.projector import Projector

EXP_CUTOFF = 88.0  # ALGORITHM pitfall 13: weights with Δ(log w) > 88 are zero
MAX_SAMPLES_PER_GROUP = 20_000  # significant coarse samples per pass-2 group (memory bound)
# cost of the 32 sparse pass-2 samples of one significant coarse sample (os = 1) relative to 4 entries of
# the dense GEMM; measured 150 on 2 CPU cores (6MSM box 48, iteration 2 of a broad run: dense 96 s, sparse
# 164 s at 8.8 % significant coarse samples), so pass 2 is dense from 1/19 of the coarse samples
SPARSE_COST = 150
DENSE_BYTES = 2.5e8  # scores per image group in the dense pass 2


@dataclass
class Candidates:
    """Coarse hidden-variable rows for a batch: a table of U (class, orientation) rows and either
    one shared list (all of the table, `per_image` None) or per-image lists `per_image` (B, Rb)
    into the table (−1 = padding).

    matrices : (U, 3, 3) with the perturbation applied; classes : (U,) long 0-based class;
    log_prior : (U,) shared, or (B, Rb) per image, natural-log prior of class and orientation
    """

    table: OrientationGrid
    matrices: torch.Tensor
    log_prior: torch.Tensor
    per_image: torch.Tensor | None = None
    classes: torch.Tensor = None  # type: ignore[assignment]  (default: every row is class 0)

    def __post_init__(self) -> None:
        if self.classes is None:
            self.classes = torch.zeros(len(self.table), dtype=torch.long, device=self.matrices.device)

    def to(self, device: torch.device) -> Candidates:
        """These candidates with their tensors on `device` (the table stays on the host)."""
        if self.matrices.device == torch.device(device):
            return self
        return Candidates(self.table, self.matrices.to(device), self.log_prior.to(device),
                          None if self.per_image is None else self.per_image.to(device), self.classes.to(device))

    def with_classes(self, log_class_prior: np.ndarray) -> Candidates:
        """The same orientations for each of K classes (rows k·U … (k+1)·U − 1 are class k), with
        log π_k added to the prior; `self` must be single-class."""
        k, u = len(log_class_prior), len(self.table)
        table = OrientationGrid(np.tile(self.table.angles, (k, 1)), np.tile(self.table.direction, k),
                                np.tile(self.table.psi_index, k), self.table.order, self.table.n_psi,
                                self.table.in_plane)
        device = self.matrices.device
        log_pi = torch.as_tensor(log_class_prior, dtype=torch.float64, device=device)
        classes = torch.arange(k, device=device).repeat_interleave(u)
        if self.per_image is None:
            log_prior = torch.cat([self.log_prior + log_pi[c] for c in range(k)])
            return Candidates(table, self.matrices.repeat(k, 1, 1), log_prior, None, classes)
        per_image = torch.cat([torch.where(self.per_image >= 0, self.per_image + c * u, -1) for c in range(k)], dim=1)
        log_prior = torch.cat([self.log_prior + log_pi[c] for c in range(k)], dim=1)
        return Candidates(table, self.matrices.repeat(k, 1, 1), log_prior, per_image, classes)


@dataclass
class EStepSettings:
    """What the E-step needs besides the model: windows, translations, oversampling, weighting."""

    coarse_window: FrequencyWindow
    fine_window: FrequencyWindow
    translations_px: torch.Tensor  # (T, 2) coarse translations incl. perturbation, relative
    offset_step_px: float
    oversampling: int
    pixel_size: float
    adaptive_fraction: float = 0.999
    weighting: Marginalisation | CrossCorrelation | None = None
    maxsig: int | None = None
    norm_residuals: bool = False  # per-image residual power for the norm correction (also under maxCC)
    scale_sums: bool = False  # signal/reference products per intensity-scale group (§5.6)
    residual_sums: bool = False  # back-project the residuals X − s·C·P V̂, not X (VDAM's gradient, §8.1.5)

    def __post_init__(self) -> None:
        if self.weighting is None:
            self.weighting = Marginalisation()

    def to(self, device: torch.device) -> EStepSettings:
        """These settings with the windows and translations on `device`."""
        return dataclasses.replace(self, coarse_window=self.coarse_window.to(device),
                                   fine_window=self.fine_window.to(device),
                                   translations_px=self.translations_px.to(device))


class Marginalisation:
    """RELION's regularised likelihood: log w = −diff2 + log priors, posteriors ∝ exp(log w)."""

    uses_priors = True
    updates_noise = True

    def noise_weights(self, sigma2_pixels: torch.Tensor, shell: torch.Tensor) -> torch.Tensor:
        """w = 1/(2σ²) per pixel (B, K) float64, 0 at DC (ALGORITHM §4.1)."""
        return torch.where(shell == 0, 0.0, 0.5 / sigma2_pixels)

    def log_likelihood(self, term1: torch.Tensor, cross: torch.Tensor, term2: torch.Tensor) -> torch.Tensor:
        return -(term1 - 2 * cross + term2)

    def centred(self, term1: torch.Tensor, cross: torch.Tensor, term2: torch.Tensor) -> torch.Tensor:
        """log-likelihood up to a constant per image (−term2 dropped): what pass 1 needs, small
        enough for float32; computed in the memory of `cross`."""
        return cross.mul_(2).sub_(term1)

    def unnormalised(self, log_w: torch.Tensor, rows: torch.Tensor, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """exp(log w − max over the image's rows) (0 beyond EXP_CUTOFF) and that max (n_images,);
        computed in the memory of `log_w`, which is overwritten."""
        best = _image_max(log_w, rows, n_images)
        d = log_w.sub_(best[rows][:, None].to(log_w.dtype))
        return torch.nn.functional.threshold_(d, _just_below(-EXP_CUTOFF, d.dtype), -torch.inf).exp_(), best


class CrossCorrelation:
    """Classical projection matching (`--maxcc`): normalised cross-correlation, no priors, the
    single best sample of each image gets weight 1, σ² is not learned (ALGORITHM §4.7)."""

    uses_priors = False
    updates_noise = False

    def noise_weights(self, sigma2_pixels: torch.Tensor, shell: torch.Tensor) -> torch.Tensor:
        return torch.where(shell == 0, 0.0, torch.ones_like(sigma2_pixels))

    def log_likelihood(self, term1: torch.Tensor, cross: torch.Tensor, term2: torch.Tensor) -> torch.Tensor:
        return cross / (torch.sqrt(term1.clamp(min=1e-30)) * torch.sqrt(term2))

    centred = log_likelihood

    def unnormalised(self, log_w: torch.Tensor, rows: torch.Tensor, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        best = _image_max(log_w, rows, n_images)
        row_best = log_w.max(dim=1)
        winner = torch.full((n_images,), len(rows), dtype=torch.long, device=log_w.device)
        is_best = row_best.values >= best[rows].to(log_w.dtype)
        winner.scatter_reduce_(0, rows[is_best], torch.nonzero(is_best).squeeze(1), reduce="amin")
        w = torch.zeros_like(log_w)
        found = winner < len(rows)
        w[winner[found], row_best.indices[winner[found]]] = 1.0
        return w, best


def _just_below(value: float, dtype: torch.dtype) -> float:
    """The largest number of `dtype` below `value`: `threshold_(x, t, v)` sets x ≤ t to v, so with
    t = _just_below(value) it sets x < value."""
    return float(torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(-torch.inf, dtype=dtype)))


def _image_max(log_w: torch.Tensor, rows: torch.Tensor, n_images: int) -> torch.Tensor:
    """Largest log w of each image over its rows (M, S) → (n_images,) float64."""
    best = torch.full((n_images,), -torch.inf, dtype=torch.float64, device=log_w.device)
    return best.scatter_reduce(0, rows, log_w.max(dim=1).values.double(), reduce="amax")


def posteriors(weighting, log_w: torch.Tensor, rows: torch.Tensor, n_images: int,
               fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Posteriors γ (M, S) of samples grouped in rows of images `rows` (M,), sorted, normalised over
    each image's samples and pruned to the smallest set holding `fraction` of them (not
    renormalised, ALGORITHM pitfall 14); and log Σ_j of each image (n_images,). γ is computed in
    the memory of `log_w`, which is overwritten."""
    w, best = weighting.unnormalised(log_w, rows, n_images)
    total = torch.zeros(n_images, dtype=torch.float64, device=w.device).index_add_(0, rows, w.sum(dim=1).double())
    gamma = w.div_(total[rows][:, None].to(w.dtype))
    ends = torch.searchsorted(rows, torch.arange(n_images + 1, device=rows.device)).tolist()
    flat = gamma.view(-1)
    n_s = gamma.shape[1]
    for start, end in zip(ends[:-1], ends[1:], strict=True):  # in place, one image's samples at a time
        if end > start:
            segment = flat[start * n_s : end * n_s]
            threshold, _ = _row_significance(segment, fraction)
            torch.nn.functional.threshold_(segment, _just_below(float(threshold), segment.dtype), 0.0)
    return gamma, best + torch.log(total)


@dataclass
class GemmStats:
    """Optional accounting of the cross-term matrix products (benchmarks switch it on)."""

    enabled: bool = False
    flops: float = 0.0
    seconds: float = 0.0
    shapes: list = field(default_factory=list)


GEMM_STATS = GemmStats()


@dataclass
class StageTimes:
    """Optional wall time per stage of the E-step (benchmarks switch it on): `with STAGES("name"):`.
    Stages are listed in the order they are entered; a name that starts with a space is a part of
    the stage entered before it."""

    enabled: bool = False
    seconds: dict = field(default_factory=dict)
    cuda: bool = False  # wait for the GPU at each edge (its kernels run asynchronously)

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        self.seconds.setdefault(name, 0.0)
        _wait(self.cuda)
        start = time.perf_counter()
        try:
            yield
        finally:
            _wait(self.cuda)
            self.seconds[name] += time.perf_counter() - start


def _wait(cuda: bool) -> None:
    """Block until the current GPU's queued kernels are done (timing only)."""
    if cuda:
        torch.cuda.synchronize()


STAGES = StageTimes()


def _gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, timed into GEMM_STATS when enabled."""
    if not GEMM_STATS.enabled:
        return a @ b
    _wait(a.is_cuda)
    start = time.perf_counter()
    out = a @ b
    _wait(a.is_cuda)
    GEMM_STATS.seconds += time.perf_counter() - start
    GEMM_STATS.flops += 2.0 * a.numel() * b.shape[-1]
    GEMM_STATS.shapes.append((tuple(a.shape), tuple(b.shape)))
    return out


def phases(window: FrequencyWindow, shifts_px: torch.Tensor, box: int) -> torch.Tensor:
    """exp(−2πi k·t/N) for shifts (..., 2) px at the window's frequencies → (..., K) complex128."""
    arg = shifts_px.to(torch.float64) @ window.k.T
    return torch.polar(torch.ones_like(arg), -2 * torch.pi * arg / box)


@dataclass(frozen=True)
class FineShifts:
    """The pass-2 translations of a batch, each with its phase factors computed once: shift
    j = t·n_child + c is coarse translation t plus oversampled child c.

    t_px : (T·n_child, 2) relative px; phase : (T·n_child, K) complex128 at the fine window
    """

    t_px: torch.Tensor
    phase: torch.Tensor
    n_child: int

    @classmethod
    def build(cls, st: EStepSettings, box: int) -> FineShifts:
        child = torch.from_numpy(translation_children(st.offset_step_px, st.oversampling)).to(st.translations_px.device)
        t_px = (st.translations_px[:, None, :] + child[None]).reshape(-1, 2)
        return cls(t_px, phases(st.fine_window, t_px, box), len(child))


def noise_weights(window: FrequencyWindow, sigma2: torch.Tensor, maxcc: bool = False) -> torch.Tensor:
    """w(k) = 1/(2σ²(shell)) of one σ² spectrum (S,) (1 in maxCC mode), 0 at DC → (K,) float64."""
    weighting = CrossCorrelation() if maxcc else Marginalisation()
    return weighting.noise_weights(sigma2[window.shell], window.shell)


def _real_cat(z: torch.Tensor) -> torch.Tensor:
    """(..., K) complex → (..., 2K) float32 [Re, Im] so that Re(conj(a)·b) sums become real GEMMs."""
    return torch.cat([z.real, z.imag], dim=-1).to(torch.float32)


SUB_BINS_BITS = 6  # `significance` bins: 2^6 = 64 per factor of 2 (the top mantissa bits)
TOPK_FRACTION = 1 / 16  # `significance` sorts directly when at most this share of a row can be needed
_FLOAT_BITS = {torch.float32: (torch.int32, 23), torch.float64: (torch.int64, 52)}  # integer view, mantissa bits


def significance(weights: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of weights (B, S) ≥ 0: (threshold (B,), count (B,)) of the smallest set holding
    `fraction` of the row's sum (RELION `convertAllSquaredDifferencesToWeights`).

    Only values ≥ (1 − fraction)·sum/n_nonzero can be needed (the rest hold less than 1 − fraction
    together): when few are, they are ordered directly (topk); otherwise the row is summed in a
    histogram of log2(w) with 2^SUB_BINS_BITS bins per factor of 2 (read from the float's exponent
    and top mantissa bits), every value in a bin above the one where the sum from the top reaches
    `fraction` is kept, and only that bin's values are ordered. Rows are taken one at a time so that
    the temporaries stay a row long."""
    out = [_row_significance(row, fraction) for row in weights]
    if not out:
        return (torch.zeros(0, dtype=weights.dtype, device=weights.device),
                torch.zeros(0, dtype=torch.long, device=weights.device))
    return torch.stack([t for t, _ in out]), torch.stack([c for _, c in out])


def _row_significance(w: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(threshold, count) of one row of weights (S,) ≥ 0, as `significance`."""
    total = w.sum(dtype=torch.float64)
    nonzero = torch.count_nonzero(w).clamp(min=1)
    floor = ((1 - fraction) * total / nonzero).to(w.dtype)
    k = int((w >= floor).sum().clamp(min=1))
    goal = fraction * total
    if k <= TOPK_FRACTION * len(w):
        ordered = torch.topk(w, k, sorted=True).values
        count = (torch.cumsum(ordered.double(), 0) < goal).sum() + 1
        count = torch.minimum(count.clamp(max=k), nonzero)
        return ordered[count - 1], count
    int_type, mantissa = _FLOAT_BITS[w.dtype]
    bits = w.contiguous().view(int_type) >> (mantissa - SUB_BINS_BITS)  # monotone in w ≥ 0
    bins = bits.max() - bits  # 0 = the largest values' bin
    n_bins = int(bins.max()) + 1
    hist = torch.bincount(bins, weights=w.double(), minlength=n_bins)
    counts = torch.bincount(bins, minlength=n_bins)
    cum = torch.cumsum(hist, 0)
    crossing = (cum < goal).sum().clamp(max=n_bins - 1)  # the bin holding the last value kept
    ordered = torch.sort(w[bins == crossing], descending=True).values
    above = counts[:crossing].sum()
    within = (cum[crossing] - hist[crossing] + torch.cumsum(ordered.double(), 0) < goal).sum() + 1
    within = within.clamp(max=len(ordered))
    threshold, count = ordered[within - 1], above + within
    if bool(count > nonzero):  # the sum reached only with the zeros (rounding, fraction → 1)
        positive = w[w > 0]
        return (positive.min() if len(positive) else w.max()), nonzero
    return threshold, count


@dataclass
class Pixels:
    """A batch at one window: masked images x, unmasked x0, (B, K) complex; the CTF terms c_ref,
    c_image, c2 and noise weights w (B, K); σ² per pixel (B, K); intensity scale s (B,)."""

    x: torch.Tensor
    x0: torch.Tensor
    c_ref: torch.Tensor
    c_image: torch.Tensor
    c2: torch.Tensor
    w: torch.Tensor
    sigma2: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def of(cls, batch: ImageBatch, win: FrequencyWindow, model: Model, weighting) -> Pixels:
        sigma2 = model.sigma2_noise[batch.group][:, win.shell]
        scale = torch.from_numpy(np.asarray(model.scale, dtype=np.float64)).to(sigma2.device)[batch.scale_group]
        c_ref, c_image, c2 = batch.ctf_terms(win, scale)
        return cls(batch.window(win), batch.window(win, masked=False), c_ref, c_image, c2,
                   weighting.noise_weights(sigma2, win.shell), sigma2, scale)

    def rows(self, g: torch.Tensor) -> Pixels:
        """The images at positions g of this batch."""
        return Pixels(self.x[g], self.x0[g], self.c_ref[g], self.c_image[g], self.c2[g], self.w[g], self.sigma2[g],
                      self.scale[g])

    def term2(self) -> torch.Tensor:
        """Σ_k w|X|² per image (B,) float64."""
        return (self.w * self.x.abs() ** 2).sum(dim=1)


def _score_coarse(batch: ImageBatch, model: Model, cand: Candidates, proj_c: Projections, st: EStepSettings,
                  box: int) -> torch.Tensor:
    """log-likelihood of pass 1 up to a constant per image → (B, T, Rb) float32 (it only selects
    the significant samples; pass 2 scores them again)."""
    px = Pixels.of(batch, st.coarse_window, model, st.weighting)
    y = px.x[:, None, :] * phases(st.coarse_window, st.translations_px, box)[None]  # (B, T, K)
    a = _real_cat(y * (px.w * px.c_ref)[:, None, :])  # (B, T, 2K)
    wc2 = (px.w * px.c_ref**2).to(torch.float32)  # (B, K)
    if cand.per_image is None:
        cross = _gemm(a, proj_c.real.T)  # (B, T, R): one GEMM over all classes' projections
        term1 = wc2 @ proj_c.abs2.T  # (B, R)
    else:
        idx = cand.per_image.clamp(min=0)
        cross = torch.bmm(a, proj_c.real[idx].transpose(1, 2))
        term1 = torch.bmm(wc2[:, None, :], proj_c.abs2[idx].transpose(1, 2)).squeeze(1)
    return st.weighting.centred(term1[:, None, :], cross, px.term2().to(torch.float32)[:, None, None])


def _offset_log_prior(batch: ImageBatch, t_rel: torch.Tensor, model: Model, pixel: float) -> torch.Tensor:
    """log p(t) of absolute offsets t0 + t (Å) around the prior centre, Gaussian of σ_offset → (B, T)."""
    d = (batch.offset0_px[:, None, :] + t_rel[None] - batch.offset_prior_px[:, None, :]) * pixel
    return -(d**2).sum(-1) / (2 * model.sigma_offset_angstrom**2)


def project_rows(projectors: list[Projector], matrices: torch.Tensor, classes: torch.Tensor,
                 k: torch.Tensor) -> torch.Tensor:
    """Projections of rows (R,) of mixed classes at frequencies k (K, 2) → (R, K) complex."""
    if len(projectors) == 1:
        return projectors[0].project_frequencies(matrices, k)
    out = torch.empty((len(matrices), len(k)), dtype=projectors[0].spectrum.dtype, device=k.device)
    for c in torch.unique(classes).tolist():
        sel = classes == c
        out[sel] = projectors[c].project_frequencies(matrices[sel], k)
    return out


def insert_rows(sums: Sums, data: torch.Tensor, weight: torch.Tensor, matrices: torch.Tensor,
                classes: torch.Tensor, k: torch.Tensor, proj: torch.Tensor | None = None) -> None:
    """Back-project per-row sums data (R, 2K) [Re, Im], weight (R, K) into each row's class. With
    the rows' projections `proj` (R, 2K) [Re, Im], the residual sums data − weight·proj instead:
    Σγ·c_image·(X − s·C·P V̂)/σ² = Σγ·c_image·X/σ² − Σγ·s²C²/σ² · P V̂, as c_image·s·C = s²C² for
    plain and premultiplied images alike (RELION's gradient back-projection)."""
    if proj is not None:
        data = data - weight.repeat(1, 2) * proj
    used = weight.sum(dim=1) > 0
    n = weight.shape[1]
    for c in torch.unique(classes[used]).tolist():
        sel = torch.nonzero(used & (classes == c)).squeeze(1)
        values = torch.complex(data[sel, :n], data[sel, n:])
        sums.reconstructors[c].insert_frequencies(values, weight[sel], matrices[sel], k)


def expectation(
    batch: ImageBatch,
    model: Model,
    projectors: list[Projector],
    cand: Candidates,
    proj_c: Projections,
    st: EStepSettings,
    sums: Sums,
    results: ParticleResults,
    fine_grid: FineGrid | None = None,
) -> None:
    """Run both passes for one batch and add its statistics into `sums` and `results`.

    With `fine_grid` (global searches whose oversampled grid fits in memory) the fine projections
    are shared and back-projection sums stay per fine row until the end of the E-step; pass 2 is
    then dense GEMMs over the whole fine grid when many coarse samples are significant, or sparse
    per-sample products when few are (whichever costs fewer operations)."""
    box = batch.masked.shape[-2]  # the images' box (N_g of their optics group)
    n_b = len(batch)
    # ---- pass 1: coarse rows × coarse translations at the coarse window
    with STAGES("pass 1: coarse scores"):
        loglik = _score_coarse(batch, model, cand, proj_c, st, box)  # (B, T, Rb)
    prior_t = _offset_log_prior(batch, st.translations_px, model, st.pixel_size)  # (B, T)
    prior_r = cand.log_prior if cand.per_image is not None else cand.log_prior[None].expand(n_b, -1)
    if st.weighting.uses_priors:
        log_w = loglik.add_(prior_t.to(torch.float32)[:, :, None]).add_(prior_r.to(torch.float32)[:, None, :])
    else:
        log_w = loglik
    if cand.per_image is not None:
        log_w = torch.where((cand.per_image < 0)[:, None, :], torch.full_like(log_w, -torch.inf), log_w)
    with STAGES("pass 1: weights and significance"):
        w1, _ = st.weighting.unnormalised(log_w.reshape(n_b, -1), torch.arange(n_b, device=log_w.device), n_b)
        thr1, count1 = significance(w1, st.adaptive_fraction)
    if st.maxsig is not None:  # RELION --maxsig: at most this many coarse samples per image
        top = torch.topk(w1, min(st.maxsig, w1.shape[1]), dim=1).values[:, -1]
        thr1 = torch.maximum(thr1, top)
        count1 = torch.minimum(count1, torch.full_like(count1, st.maxsig))
    significant = (w1 >= thr1[:, None]).reshape(loglik.shape)
    results.n_significant[batch.indices] = count1.cpu().numpy()
    n_sig = int(significant.sum())
    if fine_grid is not None:
        with STAGES("fine projections"):
            fine_grid.project(projectors, torch.nonzero(significant.any(dim=1).any(dim=0)).squeeze(1),
                              st.fine_window)
    if fine_grid is not None and n_sig * SPARSE_COST > n_b * loglik.shape[1] * len(fine_grid.parent):
        with STAGES("pass 2: dense scores and sums"):
            _dense_fine(batch, model, st, significant, prior_t, cand, fine_grid, FineShifts.build(st, box), sums,
                        results)
        return
    # ---- pass 2 (sparse): children of each image's significant coarse samples, a group of
    # images at a time so that memory is bounded by the number of samples
    shifts = FineShifts.build(st, box)
    per_image = significant.reshape(n_b, -1).sum(dim=1)
    group = torch.cumsum(per_image, 0) // MAX_SAMPLES_PER_GROUP
    for g in torch.unique(group).tolist():
        members = torch.nonzero(group == g).squeeze(1)
        sig_b, sig_t, sig_slot = torch.nonzero(significant[members], as_tuple=True)
        sig_prior = prior_t[members][sig_b, sig_t] + prior_r[members][sig_b, sig_slot]
        sig_r = cand.per_image[members][sig_b, sig_slot] if cand.per_image is not None else sig_slot
        sub = batch.subset(members)
        with STAGES("pass 2: sparse scores"):
            fine = _fine_pass(sub, model, projectors, cand, st, sig_b, sig_t, sig_r, sig_prior, shifts, fine_grid)
        with STAGES("pass 2: sparse sums"):
            _accumulate(sub, model, st, fine, shifts, sums, results, fine_grid)


@dataclass
class Projections:
    """Projections of R rows in the forms the products use: real (R, 2K) [Re, Im] and abs2 (R, K)
    |P|², both float32."""

    real: torch.Tensor
    abs2: torch.Tensor

    @classmethod
    def of(cls, proj: torch.Tensor) -> Projections:
        return cls(_real_cat(proj), (proj.abs() ** 2).to(torch.float32))

    def __getitem__(self, rows: torch.Tensor) -> Projections:
        return Projections(self.real[rows], self.abs2[rows])


@dataclass
class FineSamples:
    """Pass-2 samples: for each significant coarse sample s, 4^os translations × 8^os rotations.

    b : (S,) image; shift : (S, nt) rows of the batch's `FineShifts`; rows : (S, nr) rows of `proj`
    (fine projections, `matrices`, `classes`); weight : (S, nt, nr) posterior γ (0 if pruned);
    direction : (S,) coarse direction; log_sum : (B,) log Σ_j.
    """

    b: torch.Tensor
    shift: torch.Tensor
    rows: torch.Tensor
    weight: torch.Tensor
    matrices: torch.Tensor
    classes: torch.Tensor
    proj: Projections
    direction: torch.Tensor
    log_sum: torch.Tensor


def _fine_pass(batch, model, projectors, cand, st, sig_b, sig_t, sig_r, sig_prior, shifts: FineShifts,
               grid) -> FineSamples:
    """Score the children of the significant coarse samples: one small GEMM per sample between the
    shifted image of its (image, coarse translation) pair, formed once per pair, and the
    projections of its child orientations."""
    os_ = st.oversampling
    win = st.fine_window
    n_child = (2 if cand.table.in_plane else 8) ** os_  # children per coarse orientation
    device = sig_r.device
    if grid is not None:
        mats, proj, classes = grid.matrices, grid.proj, grid.classes
        rows = sig_r[:, None] * n_child + torch.arange(n_child, device=device)[None]
    else:
        uniq_r, inv_r = torch.unique(sig_r, return_inverse=True)
        children = oversampled_children(cand.table, uniq_r.cpu().numpy(), os_)
        mats = _child_matrices(cand, uniq_r, children, n_child)
        classes = cand.classes[uniq_r].repeat_interleave(n_child)
        proj = Projections.of(project_rows(projectors, mats, classes, win.k_ref))  # (U·nr, K)
        rows = inv_r[:, None] * n_child + torch.arange(n_child, device=device)[None]  # (S, nr)
    nt = shifts.n_child
    n_t = len(st.translations_px)
    shift = sig_t[:, None] * nt + torch.arange(nt, device=device)[None]  # (S, nt)
    px = Pixels.of(batch, win, model, st.weighting)
    # distinct (image, coarse t) pairs; the samples come sorted by image then t, so by pair
    pair, pair_of = torch.unique(sig_b * n_t + sig_t, return_inverse=True)
    pb, pt = pair // n_t, pair % n_t
    phase = shifts.phase.reshape(n_t, nt, -1)
    wx = px.w * px.c_ref
    wc2 = (px.w * px.c_ref**2).to(torch.float32)
    n_s = len(sig_b)
    loglik = torch.empty((n_s, nt, n_child), dtype=torch.float64, device=device)
    term2 = px.term2()
    chunk = max(1, 4_000_000 // max(len(win.k), 1) // (nt + n_child))
    for s0 in range(0, n_s, chunk):
        sl = slice(s0, s0 + chunk)
        b = sig_b[sl]
        p0, p1 = int(pair_of[sl][0]), int(pair_of[sl][-1]) + 1
        a_pair = _real_cat(px.x[pb[p0:p1]][:, None, :] * phase[pt[p0:p1]] * wx[pb[p0:p1]][:, None, :])  # (P, nt, 2K)
        cross = torch.bmm(a_pair[pair_of[sl] - p0], proj.real[rows[sl]].transpose(1, 2)).double()  # (s, nt, nr)
        term1 = torch.bmm(proj.abs2[rows[sl]], wc2[b][:, :, None]).double().transpose(1, 2)  # (s, 1, nr)
        loglik[sl] = st.weighting.log_likelihood(term1, cross, term2[b][:, None, None])
    log_w = loglik + sig_prior[:, None, None] if st.weighting.uses_priors else loglik
    weight, log_sum = posteriors(st.weighting, log_w.reshape(n_s, -1), sig_b, len(batch), st.adaptive_fraction)
    direction = torch.from_numpy(cand.table.direction).to(device)[sig_r]
    return FineSamples(sig_b, shift, rows, weight.reshape(log_w.shape), mats, classes, proj, direction, log_sum)


def _child_matrices(cand: Candidates, uniq_r: torch.Tensor, children: OrientationGrid, n_child: int) -> torch.Tensor:
    """Fine rotation matrices, carrying each parent's perturbation (A_parent⁻¹·A_perturbed)."""
    device = cand.matrices.device
    parent_plain = cand.table.matrices().to(device)[uniq_r]
    perturb = parent_plain.transpose(1, 2) @ cand.matrices[uniq_r]  # E per parent
    return children.matrices().to(device) @ perturb.repeat_interleave(n_child, dim=0)


def _add_residuals(sums: Sums, results: ParticleResults, batch: ImageBatch, shell: torch.Tensor,
                   per_image: torch.Tensor, gamma_image: torch.Tensor, update_noise: bool) -> None:
    """Per-image residual power Σγ|s·C·V̂ − X|² (B, K) at pixels of `shell`: into the σ² sums of each
    image's optics group (with the image power beyond the window and Σγ) when `update_noise`, and
    summed with that power into each particle's residual power (norm correction)."""
    beyond = _beyond_window_power(batch, int(shell.max()))
    if update_noise:
        g = batch.group[:, None].expand_as(per_image)
        sums.sigma2.index_put_((g.reshape(-1), shell[None].expand_as(per_image).reshape(-1)),
                               per_image.reshape(-1).double(), accumulate=True)
        sums.sigma2[:, : beyond.shape[1]].index_add_(0, batch.group, beyond)  # (the images' own shells)
        sums.n_images.index_add_(0, batch.group, gamma_image.double())
    results.residual_power[batch.indices] = (per_image.sum(dim=1) + beyond.sum(dim=1)).cpu().numpy()


def _add_scale_sums(sums: Sums, batch: ImageBatch, px: Pixels, product: torch.Tensor, power: torch.Tensor,
                    gamma_image: torch.Tensor) -> None:
    """Σγ Re(conj(s·C·V̂)·X)/s and Σγ|s·C·V̂|²/s² per image (B,) (shells with data_vs_prior > 3) into
    the sums of each image's intensity-scale group (RELION `storeWeightedSums`)."""
    g = batch.scale_group.cpu().numpy()
    sums.signal_product += np.bincount(g, (product / px.scale).cpu().numpy(), len(sums.signal_product))
    sums.reference_power += np.bincount(g, (power / px.scale**2).cpu().numpy(), len(sums.reference_power))
    sums.scale_weight += np.bincount(g, gamma_image.cpu().numpy(), len(sums.scale_weight))


def _scale_shells(model: Model, win: FrequencyWindow) -> torch.Tensor:
    """(K_classes, K) pixels whose shell has data_vs_prior > 3 for each class."""
    return (model.ssnr > 3)[:, win.ref_shell]


def _sparse(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A sparse (rows × cols) matrix of float32 values, for products with dense matrices."""
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values.to(torch.float32), shape,
                                   check_invariants=False).coalesce()


def _accumulate(batch: ImageBatch, model: Model, st: EStepSettings, fine: FineSamples, shifts: FineShifts,
                sums: Sums, results: ParticleResults, grid: FineGrid | None) -> None:
    """Add the M significant pass-2 samples into the sums as sparse × dense products: the shifted,
    CTF-weighted images are formed once per distinct (image, shift, class) pair P, the
    projections once per distinct fine row U, and γ is an (U × P) sparse matrix between them."""
    win = st.fine_window
    n_b, n_cls, n_sh = len(batch), model.n_classes, len(shifts.t_px)
    s, it, ir = torch.nonzero(fine.weight > 0, as_tuple=True)
    gamma = fine.weight[s, it, ir].double()
    b = fine.b[s]
    u = fine.rows[s, ir]  # rows of fine.proj / fine.matrices
    shift = fine.shift[s, it]
    cls = fine.classes[u]
    px = Pixels.of(batch, win, model, st.weighting)
    used, u_loc = torch.unique(u, return_inverse=True)
    pair, p_loc = torch.unique((b * n_sh + shift) * n_cls + cls, return_inverse=True)
    pb, psh, pc = pair // (n_sh * n_cls), pair // n_cls % n_sh, pair % n_cls
    kk = len(win.k)
    residuals = st.weighting.updates_noise or st.norm_residuals or st.scale_sums
    proj = fine.proj[used]
    # back-projection: data_u += Σ γ C X⁰ shift(t)/σ², weight_u += Σ γ C²/σ²; and the residual
    # cross term Σγ Re(conj(shift(X))·sCP) per pair, a bounded number of pairs at a time
    device = gamma.device
    data = torch.zeros((len(used), 2 * kk), device=device)
    s3_image = torch.zeros((n_b, kk), dtype=torch.float64, device=device)
    product = torch.zeros(n_b, dtype=torch.float64, device=device)
    strong = _scale_shells(model, win).to(torch.float64) if st.scale_sums else None
    by_pair = torch.argsort(p_loc)
    chunk = max(1, 2_000_000 // kk)
    edges = torch.searchsorted(p_loc[by_pair], torch.arange(0, len(pair) + chunk, chunk, device=device)).tolist()
    for c, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if lo == hi:
            continue
        m, c0 = by_pair[lo:hi], c * chunk
        cb, ph = pb[c0 : c0 + chunk], shifts.phase[psh[c0 : c0 + chunk]]
        n_c = len(cb)
        z = _real_cat(px.c_image[cb] * px.x0[cb] * ph / px.sigma2[cb])  # (P_c, 2K)
        data += torch.sparse.mm(_sparse(u_loc[m], p_loc[m] - c0, gamma[m], (len(used), n_c)), z)
        if residuals:
            q = torch.sparse.mm(_sparse(p_loc[m] - c0, u_loc[m], gamma[m], (n_c, len(used))), proj.real).double()
            s3 = ((px.x[cb] * ph).conj() * torch.complex(q[:, :kk], q[:, kk:])).real * px.c_ref[cb]
            s3_image.index_add_(0, cb, s3)
            if strong is not None:
                product.index_add_(0, cb, (s3 * strong[pc[c0 : c0 + chunk]]).sum(dim=1))
    weight = torch.sparse.mm(_sparse(u_loc, b, gamma, (len(used), n_b)), (px.c2 / px.sigma2).to(torch.float32))
    if grid is not None:
        grid.data.index_add_(0, used, data)
        grid.weight.index_add_(0, used, weight)
    else:
        insert_rows(sums, data, weight, fine.matrices[used], fine.classes[used], win.k_ref,
                    proj.real if st.residual_sums else None)
    g_img = torch.zeros(n_b, dtype=torch.float64, device=device).index_add_(0, b, gamma)
    if residuals:
        # Σγ|sCP|² per (image, class)
        bc, bc_loc = torch.unique(b * n_cls + cls, return_inverse=True)
        bc_b, bc_c = bc // n_cls, bc % n_cls
        s1 = torch.sparse.mm(_sparse(bc_loc, u_loc, gamma, (len(bc), len(used))), proj.abs2).double()
        s1 = s1 * px.c_ref[bc_b] ** 2
        per_image = torch.zeros((n_b, kk), dtype=torch.float64, device=device).index_add_(0, bc_b, s1)
        per_image += px.x.abs() ** 2 * g_img[:, None] - 2 * s3_image
        if st.weighting.updates_noise or st.norm_residuals:
            _add_residuals(sums, results, batch, win.shell, per_image, g_img, st.weighting.updates_noise)
        if strong is not None:
            power = torch.zeros(n_b, dtype=torch.float64, device=device).index_add_(
                0, bc_b, (s1 * strong[bc_c]).sum(dim=1))
            _add_scale_sums(sums, batch, px, product, power, g_img)
    t_px = shifts.t_px[shift]
    t_rel = (batch.offset0_px[b] + t_px - batch.offset_prior_px[b]) * st.pixel_size
    sums.offset_sq += float((gamma * (t_rel**2).sum(dim=1)).sum())
    np.add.at(sums.pdf_direction, (cls.cpu().numpy(), fine.direction[s].cpu().numpy()), gamma.cpu().numpy())
    class_post = torch.zeros((n_b, n_cls), dtype=torch.float64, device=device).index_put_(
        (b, cls), gamma, accumulate=True)
    best_val = torch.full((n_b,), -1.0, dtype=torch.float64, device=device).scatter_reduce(
        0, b, gamma, reduce="amax")
    is_best = gamma >= best_val[b]
    pick = torch.full((n_b,), len(gamma), dtype=torch.long, device=device)
    pick.scatter_reduce_(0, b[is_best], torch.nonzero(is_best).squeeze(1), reduce="amin")
    _record(batch, results, sums, fine.matrices[u[pick]], cls[pick], t_px[pick], best_val, fine.log_sum,
            class_post, px)


def _record(batch: ImageBatch, results: ParticleResults, sums: Sums, best_matrix: torch.Tensor,
            best_class: torch.Tensor, best_t_px: torch.Tensor, pmax: torch.Tensor, log_sum: torch.Tensor,
            class_posterior: torch.Tensor, px: Pixels) -> None:
    """Per-particle results of a batch (best pose, class, Pmax, log-likelihood, class posteriors)
    and the class weights of the sums."""
    rows = batch.indices
    results.angles[rows] = matrix_to_euler(best_matrix).cpu().numpy()
    results.offsets_px[rows] = (batch.offset0_px + best_t_px).cpu().numpy()
    results.classes[rows] = best_class.cpu().numpy()
    results.pmax[rows] = pmax.double().cpu().numpy()
    results.class_posterior[rows] = class_posterior.cpu().numpy()
    # rlnLogLikeliContribution = log Σ_j − Σ_{pixels, i>0} log(2πσ²) (ALGORITHM §4.5)
    norm = torch.where(px.w > 0, torch.log(2 * torch.pi * px.sigma2), 0.0).sum(dim=1)
    results.loglik[rows] = (log_sum - norm).cpu().numpy()
    sums.loglik += float(log_sum.sum())
    sums.class_weight += class_posterior.sum(dim=0).cpu().numpy()


def _beyond_window_power(batch: ImageBatch, r_max: int) -> torch.Tensor:
    """Σ|X_b|² per image (B, S) for shells r_max < i ≤ N/2 (no signal assumed there, ALGORITHM §5.5)."""
    box = batch.masked.shape[-2]
    full = FrequencyWindow.build(box, box, device=batch.masked.device)
    outside = full.shell > r_max
    power = batch.masked.reshape(len(batch), -1)[:, full.index[outside]].abs() ** 2
    out = torch.zeros((len(batch), box // 2 + 1), dtype=torch.float64, device=power.device)
    return out.index_add_(1, full.shell[outside], power)


@dataclass
class FineGrid:
    """The whole oversampled grid of a global search with the back-projection sums per fine row;
    the children of a coarse row are projected the first time the row is significant for an image
    and kept for the rest of the E-step.

    matrices : (R_f, 3, 3); parent : (R_f,) coarse row (children come in blocks of 8^os);
    classes : (R_f,); proj : the projections (R_f rows) at the fine window, zero until projected;
    projected : (R_c,) bool per coarse row; data : (R_f, 2K) and weight : (R_f, K) float32 sums
    """

    matrices: torch.Tensor
    parent: torch.Tensor
    classes: torch.Tensor
    proj: Projections
    projected: torch.Tensor
    data: torch.Tensor
    weight: torch.Tensor

    @classmethod
    def build(cls, cand: Candidates, oversampling: int, window: FrequencyWindow) -> FineGrid:
        device = cand.matrices.device
        every = torch.arange(len(cand.table), device=device)
        children = oversampled_children(cand.table, np.arange(len(cand.table)), oversampling)
        n_child = len(children) // len(cand.table)
        mats = _child_matrices(cand, every, children, n_child)
        classes = cand.classes.repeat_interleave(n_child)
        n, k = len(mats), len(window.k)

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(mats, every.repeat_interleave(n_child), classes, Projections(zeros(n, 2 * k), zeros(n, k)),
                   zeros(len(every), dtype=torch.bool), zeros(n, 2 * k), zeros(n, k))

    def project(self, projectors: list[Projector], coarse_rows: torch.Tensor, window: FrequencyWindow) -> None:
        """Make sure the children of `coarse_rows` (n,) are projected."""
        todo = coarse_rows[~self.projected[coarse_rows]]
        if len(todo) == 0:
            return
        n_child = len(self.parent) // len(self.projected)
        rows = (todo[:, None] * n_child + torch.arange(n_child, device=todo.device)[None]).reshape(-1)
        new = Projections.of(project_rows(projectors, self.matrices[rows], self.classes[rows], window.k_ref))
        self.proj.real[rows] = new.real
        self.proj.abs2[rows] = new.abs2
        self.projected[todo] = True

    @staticmethod
    def fits(n_coarse: int, oversampling: int, window: FrequencyWindow, budget_bytes: float = 1.5e9) -> bool:
        return n_coarse * 8**oversampling * len(window.k) * 24 < budget_bytes  # proj and sums, float32

    def insert_into(self, sums: Sums, window: FrequencyWindow, residual: bool = False) -> None:
        """Back-project the rows' sums (their residuals with `residual`, see `insert_rows`)."""
        insert_rows(sums, self.data, self.weight, self.matrices, self.classes, window.k_ref,
                    self.proj.real if residual else None)


def _dense_fine(batch, model, st, significant, prior_t, cand, grid: FineGrid, fine_shifts: FineShifts, sums,
                results) -> None:
    """Pass 2 over the whole fine grid by GEMMs, masked to the children of significant samples."""
    win = st.fine_window
    px = Pixels.of(batch, win, model, st.weighting)
    t_all, shifts = fine_shifts.t_px, fine_shifts.phase  # (T4, 2), (T4, K); parent t = i // n_child
    p_real, p_abs2 = grid.proj.real, grid.proj.abs2  # (R_f, 2K), (R_f, K)
    n_f, n_t4 = len(grid.parent), len(t_all)
    n_t, n_c = significant.shape[1:]
    kk = len(win.k)
    group = max(1, int(DENSE_BYTES // (n_t4 * n_f * 4)))
    for g0 in range(0, len(batch), group):
        g = torch.arange(g0, min(len(batch), g0 + group), device=p_real.device)
        n_g = len(g)
        y = px.x[g][:, None, :] * shifts[None]  # (G, T4, K)
        a = _real_cat(y * (px.w * px.c_ref)[g][:, None, :]).reshape(-1, 2 * kk)
        with STAGES("  of which the GEMM"):
            cross = _gemm(a, p_real.T).reshape(n_g, n_t4, n_f)
        with STAGES("  of which the weights"):
            term1 = (px.w * px.c_ref**2)[g].to(torch.float32) @ p_abs2.T  # (G, R_f)
            term2 = px.term2()[g]
            log_w = st.weighting.centred(term1[:, None, :], cross, term2.to(torch.float32)[:, None, None])
            # priors, and −∞ off the children of significant coarse samples: added per coarse (t, r)
            # to blocks of the fine grid (fine shifts and rows come in blocks of children)
            coarse = torch.full(significant[g].shape, -torch.inf, device=p_real.device)
            coarse[significant[g]] = 0.0
            if st.weighting.uses_priors:
                coarse += prior_t[g][:, :, None].to(torch.float32) + cand.log_prior.to(torch.float32)[None, None, :]
            log_w.view(n_g, n_t, fine_shifts.n_child, n_c, -1).add_(coarse[:, :, None, :, None])
            gamma, log_sum = posteriors(st.weighting, log_w.view(n_g, -1), torch.arange(n_g, device=g.device), n_g,
                                        st.adaptive_fraction)
            if isinstance(st.weighting, Marginalisation):
                log_sum -= term2  # the centred log-likelihood left −Σ w|X|² out
        gam = gamma.reshape(n_g, n_t4, n_f)
        sub, px_g = batch.subset(g), px.rows(g)
        with STAGES("  of which the sums"):
            per_row = _dense_sums(sub, model, st, px_g, gam, y, grid, shifts, sums, results)
        t_rel = (sub.offset0_px[:, None, :] + t_all[None] - sub.offset_prior_px[:, None, :]) * st.pixel_size
        sums.offset_sq += float((gam.sum(dim=2).double() * (t_rel**2).sum(-1)).sum())
        per_row_all = per_row.sum(dim=0).double().cpu().numpy()
        np.add.at(sums.pdf_direction, (grid.classes.cpu().numpy(), cand.table.direction[grid.parent.cpu().numpy()]),
                  per_row_all)
        class_post = torch.zeros((n_g, model.n_classes), dtype=torch.float64, device=g.device)
        class_post.index_add_(1, grid.classes, per_row.double())
        pick = gamma.argmax(dim=1)
        it, ir = pick // n_f, pick % n_f
        _record(sub, results, sums, grid.matrices[ir], grid.classes[ir], t_all[it], gamma.max(dim=1).values,
                log_sum, class_post, px_g)


def _dense_sums(sub: ImageBatch, model: Model, st: EStepSettings, px: Pixels, gam: torch.Tensor, y: torch.Tensor,
                grid: FineGrid, shifts: torch.Tensor, sums: Sums, results: ParticleResults) -> torch.Tensor:
    """Back-projection sums per fine row and the residual sums (σ², norm, scale) of a group of
    images `sub` (pixels px) of the dense pass 2, from their posteriors gam (G, T4, R_f), shifted
    images y (G, T4, K) and shift phases (T4, K); returns Σ_t γ per image and fine row (G, R_f)."""
    win = st.fine_window
    n_g, n_t4, n_f = gam.shape
    kk = len(win.k)
    p_real, p_abs2 = grid.proj.real, grid.proj.abs2
    z = _real_cat(px.x0[:, None, :] * shifts[None] * (px.c_image / px.sigma2)[:, None, :]).reshape(-1, 2 * kk)
    grid.data += gam.reshape(-1, n_f).T @ z
    per_row = gam.sum(dim=1)
    grid.weight += per_row.T @ (px.c2 / px.sigma2).to(torch.float32)
    g_img = gam.sum(dim=(1, 2)).double()
    if st.weighting.updates_noise or st.norm_residuals or st.scale_sums:
        # per class: Σγ|sCP|² (s1) and Σγ Re(conj(sCP)·shift(X)) (s3) per image and pixel
        s1 = torch.zeros((n_g, kk), dtype=torch.float64, device=gam.device)
        s3 = torch.zeros_like(s1)
        strong = _scale_shells(model, win) if st.scale_sums else None
        product, power = torch.zeros_like(s1[:, 0]), torch.zeros_like(s1[:, 0])
        for c, rows in _class_blocks(grid.classes):
            s1_c = (per_row[:, rows] @ p_abs2[rows]).double() * px.c_ref**2
            q = (gam.reshape(-1, n_f)[:, rows] @ p_real[rows]).double()  # (G·T4, 2K)
            q = torch.complex(q[:, :kk], q[:, kk:]).reshape(n_g, n_t4, kk)
            s3_c = (y.conj() * q).real.sum(dim=1) * px.c_ref
            s1 += s1_c
            s3 += s3_c
            if strong is not None:
                product += (s3_c * strong[c]).sum(dim=1)
                power += (s1_c * strong[c]).sum(dim=1)
        s2 = px.x.abs() ** 2 * g_img[:, None]
        _add_residuals(sums, results, sub, win.shell, s1 + s2 - 2 * s3, g_img, st.weighting.updates_noise)
        if strong is not None:
            _add_scale_sums(sums, sub, px, product, power, g_img)
    return per_row


def _class_blocks(classes: torch.Tensor) -> list[tuple[int, slice]]:
    """(class, slice of rows) for each run of equal classes in classes (R,): one per class for the
    grids, whose rows come class by class, so that no rows are copied."""
    values, counts = torch.unique_consecutive(classes, return_counts=True)
    ends = torch.cumsum(counts, 0).tolist()
    return [(c, slice(end - n, end)) for c, n, end in zip(values.tolist(), counts.tolist(), ends, strict=True)]
