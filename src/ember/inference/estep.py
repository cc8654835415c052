"""The likelihood engine (E-step) shared by refinement and classification (ALGORITHM §4–5.1).

For a batch of B images, T translations and R orientations:
diff2[b,t,r] = Σ_k w|C_b P_r|² + Σ_k w|X_b|² − 2·Re Σ_k conj(shift(X_b, t))·w·C_b·P_r,  w = 1/(2σ²),
the cross term being one real GEMM (B·T × 2K) @ (2K × R). Pass 1 scores the coarse grid at the
coarse window; pass 2 scores the oversampled children of each image's significant coarse samples
at the full window (batched small GEMMs); the significant pass-2 samples are accumulated into the
reconstructor (grouped by orientation, sparse × dense products), the σ² sums, the offset and
direction statistics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ember.inference.images import FrequencyWindow, ImageBatch
from ember.inference.model import HalfModel, ParticleResults, Sums
from ember.inference.sampling import OrientationGrid, oversampled_children, translation_children
from ember.maths.rotations import matrix_to_euler
from ember.operators.projector import Projector

EXP_CUTOFF = 88.0  # ALGORITHM pitfall 13: weights with Δ(log w) > 88 are zero
MAX_SAMPLES_PER_GROUP = 20_000  # significant coarse samples per pass-2 group (memory bound)
SPARSE_COST = 64  # operations of one sparse pass-2 sample relative to one dense GEMM entry


@dataclass
class Candidates:
    """Coarse orientations for a batch: a table (U entries) and either one shared list (all of the
    table, `per_image` None) or per-image lists `per_image` (B, Rb) into the table (−1 = padding).

    log_prior : (U,) shared, or (B, Rb) per image, natural-log orientation prior
    """

    table: OrientationGrid
    matrices: torch.Tensor  # (U, 3, 3) with the perturbation applied
    log_prior: torch.Tensor
    per_image: torch.Tensor | None = None


@dataclass
class EStepSettings:
    """What the E-step needs besides the model: windows, translations, oversampling, priors."""

    coarse_window: FrequencyWindow
    fine_window: FrequencyWindow
    translations_px: torch.Tensor  # (T, 2) coarse translations incl. perturbation, relative
    offset_step_px: float
    oversampling: int
    pixel_size: float
    adaptive_fraction: float = 0.999
    maxcc: bool = False
    maxsig: int | None = None


@dataclass
class GemmStats:
    """Optional accounting of the cross-term matrix products (benchmarks switch it on)."""

    enabled: bool = False
    flops: float = 0.0
    seconds: float = 0.0
    shapes: list = field(default_factory=list)


GEMM_STATS = GemmStats()


def _gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, timed into GEMM_STATS when enabled."""
    if not GEMM_STATS.enabled:
        return a @ b
    start = time.perf_counter()
    out = a @ b
    GEMM_STATS.seconds += time.perf_counter() - start
    GEMM_STATS.flops += 2.0 * a.numel() * b.shape[-1]
    GEMM_STATS.shapes.append((tuple(a.shape), tuple(b.shape)))
    return out


def phases(window: FrequencyWindow, shifts_px: torch.Tensor, box: int) -> torch.Tensor:
    """exp(−2πi k·t/N) for shifts (..., 2) px at the window's frequencies → (..., K) complex128."""
    arg = shifts_px.to(torch.float64) @ window.k.T
    return torch.polar(torch.ones_like(arg), -2 * torch.pi * arg / box)


def noise_weights(window: FrequencyWindow, sigma2: torch.Tensor, maxcc: bool) -> torch.Tensor:
    """w(k) = 1/(2σ²(shell)) (1 in maxCC mode), 0 at DC (ALGORITHM §4.1) → (K,) float64."""
    w = torch.ones(len(window.shell), dtype=torch.float64) if maxcc else 0.5 / sigma2[window.shell]
    return torch.where(window.shell == 0, torch.zeros_like(w), w)


def _real_cat(z: torch.Tensor) -> torch.Tensor:
    """(..., K) complex → (..., 2K) float32 [Re, Im] so that Re(conj(a)·b) sums become real GEMMs."""
    return torch.cat([z.real, z.imag], dim=-1).to(torch.float32)


def significance(weights: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of weights (B, S) ≥ 0: (threshold (B,), count (B,)) of the smallest set holding
    `fraction` of the row's sum (RELION `convertAllSquaredDifferencesToWeights`).

    Only values ≥ (1 − fraction)·sum/n_nonzero can be needed (the rest hold less than 1 − fraction
    together), so at most that many are sorted (topk)."""
    total = weights.sum(dim=1, keepdim=True)
    nonzero = (weights > 0).sum(dim=1, keepdim=True).clamp(min=1)
    floor = (1 - fraction) * total / nonzero
    k = int((weights >= floor).sum(dim=1).max().clamp(min=1))
    top = torch.topk(weights, k, dim=1, sorted=True).values
    cum = torch.cumsum(top, dim=1)
    count = (cum < fraction * total).sum(dim=1) + 1
    count = torch.minimum(count, torch.full_like(count, k))
    count = torch.minimum(count, nonzero.squeeze(1))
    threshold = top.gather(1, (count - 1)[:, None]).squeeze(1)
    return threshold, count


def _score_coarse(
    batch: ImageBatch, model: HalfModel, cand: Candidates, proj_c: torch.Tensor, st: EStepSettings, box: int
) -> torch.Tensor:
    """diff2 of pass 1 → (B, T, Rb) float64 (maxCC: negative normalised correlation)."""
    win = st.coarse_window
    w = noise_weights(win, model.sigma2_noise, st.maxcc)
    x = batch.masked.reshape(len(batch.indices), -1)[:, win.index]  # (B, K)
    c = batch.ctf.reshape(len(batch.indices), -1)[:, win.index]
    y = x[:, None, :] * phases(win, st.translations_px, box)[None]  # (B, T, K)
    a = _real_cat(y * (w * c)[:, None, :])  # (B, T, 2K)
    p2 = torch.abs(proj_c) ** 2  # (U, K)
    wc2 = (w * c * c).to(torch.float32)  # (B, K)
    if cand.per_image is None:
        cross = _gemm(a, _real_cat(proj_c).T)  # (B, T, R): one GEMM
        term1 = wc2 @ p2.to(torch.float32).T  # (B, R)
    else:
        idx = cand.per_image.clamp(min=0)
        pb = _real_cat(proj_c)[idx]  # (B, Rb, 2K)
        cross = torch.bmm(a, pb.transpose(1, 2))
        term1 = torch.bmm(wc2[:, None, :], p2.to(torch.float32)[idx].transpose(1, 2)).squeeze(1)
    term2 = (w * x.abs() ** 2).sum(dim=1)  # (B,)
    if st.maxcc:
        norm = torch.sqrt(term1.double().clamp(min=1e-30))[:, None, :] * torch.sqrt(term2)[:, None, None]
        return -cross.double() / norm
    return term1.double()[:, None, :] - 2 * cross.double() + term2[:, None, None]


def _offset_log_prior(batch: ImageBatch, t_rel: torch.Tensor, model: HalfModel, pixel: float) -> torch.Tensor:
    """log p(t) of absolute offsets t0 + t (Å), Gaussian of σ_offset around 0 → (B, T)."""
    t_abs = (batch.offset0_px[:, None, :] + t_rel[None]) * pixel
    s2 = model.sigma_offset_angstrom**2
    return -(t_abs**2).sum(-1) / (2 * s2)


def _weights(log_w: torch.Tensor, maxcc: bool) -> torch.Tensor:
    """Max-subtracted weights per row (B, S) float64; maxCC: one-hot on the best sample."""
    best = log_w.max(dim=1, keepdim=True).values
    if maxcc:
        out = torch.zeros_like(log_w)
        out.scatter_(1, log_w.argmax(dim=1, keepdim=True), 1.0)
        return out
    d = log_w - best
    return torch.where(d < -EXP_CUTOFF, torch.zeros_like(d), torch.exp(d))


def expectation(
    batch: ImageBatch,
    model: HalfModel,
    projector: Projector,
    cand: Candidates,
    proj_c: torch.Tensor,
    st: EStepSettings,
    sums: Sums,
    results: ParticleResults,
    fine_grid: FineGrid | None = None,
) -> None:
    """Run both passes for one batch and add its statistics into `sums` and `results`.

    With `fine_grid` (global searches whose oversampled grid fits in memory) the fine projections
    are shared and back-projection sums stay per fine orientation until the end of the E-step;
    pass 2 is then dense GEMMs over the whole fine grid when many coarse samples are significant,
    or sparse per-sample products when few are (whichever costs fewer operations)."""
    box = projector.box
    n_b = len(batch.indices)
    # ---- pass 1: coarse orientations × coarse translations at the coarse window
    diff2 = _score_coarse(batch, model, cand, proj_c, st, box)  # (B, T, Rb)
    prior_t = _offset_log_prior(batch, st.translations_px, model, st.pixel_size)  # (B, T)
    prior_r = cand.log_prior if cand.per_image is not None else cand.log_prior[None].expand(n_b, -1)
    # maxCC (classical projection matching) ranks by correlation alone, without priors
    log_w = -diff2 if st.maxcc else -diff2 + prior_t[:, :, None] + prior_r[:, None, :]
    if cand.per_image is not None:
        log_w = torch.where((cand.per_image < 0)[:, None, :], torch.full_like(log_w, -torch.inf), log_w)
    w1 = _weights(log_w.reshape(n_b, -1), st.maxcc)
    thr1, count1 = significance(w1, st.adaptive_fraction)
    if st.maxsig is not None:  # RELION --maxsig: at most this many coarse samples per image
        top = torch.topk(w1, min(st.maxsig, w1.shape[1]), dim=1).values[:, -1]
        thr1 = torch.maximum(thr1, top)
        count1 = torch.minimum(count1, torch.full_like(count1, st.maxsig))
    significant = w1 >= thr1[:, None]
    results.n_significant[batch.indices] = count1.numpy()
    n_sig = int(significant.sum())
    if fine_grid is not None and n_sig * SPARSE_COST > n_b * diff2.shape[1] * len(fine_grid.parent):
        _dense_fine(batch, model, st, significant.reshape(diff2.shape), prior_t, cand, fine_grid, sums, results, box)
        return
    # ---- pass 2 (sparse): children of each image's significant coarse samples, a group of
    # images at a time so that memory is bounded by the number of samples
    per_image = significant.sum(dim=1)
    group = torch.cumsum(per_image, 0) // MAX_SAMPLES_PER_GROUP
    for g in torch.unique(group).tolist():
        members = torch.nonzero(group == g).squeeze(1)
        sub = batch.subset(members)
        sig_b, sig_flat = torch.nonzero(significant[members], as_tuple=True)
        sig_t, sig_r = sig_flat // diff2.shape[2], sig_flat % diff2.shape[2]
        if cand.per_image is not None:
            sig_r = cand.per_image[members][sig_b, sig_r]
        fine = _fine_pass(sub, model, projector, cand, st, sig_b, sig_t, sig_r, prior_t[members], box, fine_grid)
        _accumulate(sub, model, st, fine, sums, results, box, fine_grid)


@dataclass
class FineSamples:
    """Pass-2 samples: for each significant coarse sample s, 4^os translations × 8^os rotations.

    b, t : (S,) image and coarse translation; rows : (S, nr) rows of `proj` (fine projections,
    `matrices`); t_fine : (S, nt, 2) relative translations px; weight : (S, nt, nr) posterior γ
    (0 if pruned); direction : (S,) coarse direction; log_sum : (B,) log Σ of the weights.
    """

    b: torch.Tensor
    t: torch.Tensor
    rows: torch.Tensor
    t_fine: torch.Tensor
    weight: torch.Tensor
    matrices: torch.Tensor
    proj: torch.Tensor
    direction: torch.Tensor
    log_sum: torch.Tensor


def _fine_pass(batch, model, projector, cand, st, sig_b, sig_t, sig_r, prior_t, box, grid) -> FineSamples:
    os_ = st.oversampling
    win = st.fine_window
    n_child = 8**os_
    if grid is not None:
        mats, proj = grid.matrices, grid.proj
        rows = sig_r[:, None] * n_child + torch.arange(n_child)[None]
    else:
        uniq_r, inv_r = torch.unique(sig_r, return_inverse=True)
        children = oversampled_children(cand.table, uniq_r.numpy(), os_)
        mats = _child_matrices(cand, uniq_r, children, n_child)
        proj = projector.project_frequencies(mats, win.k)  # (U·nr, K)
        rows = inv_r[:, None] * n_child + torch.arange(n_child)[None]  # (S, nr)
    t_off = torch.from_numpy(translation_children(st.offset_step_px, os_))  # (nt, 2)
    t_fine = st.translations_px[sig_t][:, None, :] + t_off[None]  # (S, nt, 2)
    w = noise_weights(win, model.sigma2_noise, st.maxcc)
    x = batch.masked.reshape(len(batch.indices), -1)[:, win.index]
    c = batch.ctf.reshape(len(batch.indices), -1)[:, win.index]
    n_s = len(sig_b)
    diff2 = torch.empty((n_s, len(t_off), n_child), dtype=torch.float64)
    term2_b = (w * x.abs() ** 2).sum(dim=1)
    chunk = max(1, 4_000_000 // max(len(win.k), 1) // (len(t_off) + n_child))
    for s0 in range(0, n_s, chunk):
        sl = slice(s0, s0 + chunk)
        b = sig_b[sl]
        y = x[b][:, None, :] * phases(win, t_fine[sl], box)  # (s, nt, K)
        a = _real_cat(y * (w * c[b])[:, None, :])
        p = proj[rows[sl]]  # (s, nr, K)
        cross = torch.bmm(a, _real_cat(p).transpose(1, 2)).double()  # (s, nt, nr)
        term1 = ((p.abs() ** 2).double() * (w * c[b] ** 2)[:, None, :]).sum(-1)[:, None, :]  # (s, 1, nr)
        if st.maxcc:
            diff2[sl] = -cross / (torch.sqrt(term1.clamp(min=1e-30)) * torch.sqrt(term2_b[b])[:, None, None])
        else:
            diff2[sl] = term1 - 2 * cross + term2_b[b][:, None, None]
    log_w = -diff2
    if not st.maxcc:
        log_w = log_w + prior_t[sig_b, sig_t][:, None, None]
        if cand.per_image is None:
            log_w = log_w + cand.log_prior[sig_r][:, None, None]
        else:
            log_w = log_w + _per_image_prior(cand, sig_b, sig_r)[:, None, None]
    weight, log_sum = _segment_weights(log_w, sig_b, len(batch.indices), st)
    direction = torch.from_numpy(cand.table.direction)[sig_r]
    return FineSamples(sig_b, sig_t, rows, t_fine, weight, mats, proj, direction, log_sum)


def _child_matrices(cand: Candidates, uniq_r: torch.Tensor, children: OrientationGrid, n_child: int) -> torch.Tensor:
    """Fine rotation matrices, carrying each parent's perturbation (A_parent⁻¹·A_perturbed)."""
    parent_plain = cand.table.matrices()[uniq_r]
    perturb = parent_plain.transpose(1, 2) @ cand.matrices[uniq_r]  # E per parent
    return children.matrices() @ perturb.repeat_interleave(n_child, dim=0)


def _per_image_prior(cand: Candidates, sig_b: torch.Tensor, sig_r: torch.Tensor) -> torch.Tensor:
    """Orientation log prior of table entries sig_r for images sig_b (local searches)."""
    match = cand.per_image[sig_b] == sig_r[:, None]  # (S, Rb)
    return (torch.where(match, cand.log_prior[sig_b], torch.zeros_like(cand.log_prior[sig_b]))).sum(dim=1)


def _segment_weights(log_w: torch.Tensor, b: torch.Tensor, n_b: int, st: EStepSettings):
    """Normalised posteriors per image over its pass-2 samples, pruned at `adaptive_fraction`."""
    flat = log_w.reshape(len(b), -1)
    best = torch.full((n_b,), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, b, flat.max(dim=1).values, reduce="amax"
    )
    d = flat - best[b][:, None]
    if st.maxcc:
        w = torch.zeros_like(d)
        per_sample_best = flat.max(dim=1)
        winner = torch.full((n_b,), -1, dtype=torch.long)
        is_best = per_sample_best.values >= best[b]
        idx = torch.arange(len(b))
        winner.scatter_reduce_(0, b[is_best], idx[is_best], reduce="amin", include_self=False)
        w[winner[winner >= 0], per_sample_best.indices[winner[winner >= 0]]] = 1.0
    else:
        w = torch.where(d < -EXP_CUTOFF, torch.zeros_like(d), torch.exp(d))
    total = torch.zeros(n_b, dtype=torch.float64).index_add_(0, b, w.sum(dim=1))
    gamma = w / total[b][:, None]
    # prune: per image, keep the largest γ until their sum reaches `adaptive_fraction`
    flat_g = gamma.reshape(-1)
    img = b[:, None].expand_as(gamma).reshape(-1)
    order = torch.argsort(img.double() * 2 + (1 - flat_g), stable=True)  # by image, then γ descending
    g_sorted = flat_g[order]
    cum = torch.cumsum(g_sorted, 0)
    counts = torch.bincount(img, minlength=n_b)
    offsets = torch.cumsum(counts, 0) - counts
    start = torch.cat([torch.zeros(1, dtype=torch.float64), cum])[offsets]
    before = cum - g_sorted - start[img[order]]
    keep = torch.zeros_like(flat_g, dtype=torch.bool)
    keep[order] = before < st.adaptive_fraction
    gamma = torch.where(keep.reshape(gamma.shape), gamma, torch.zeros_like(gamma))
    return gamma.reshape(log_w.shape), best + torch.log(total)


def _accumulate(batch: ImageBatch, model: HalfModel, st: EStepSettings, fine: FineSamples, sums: Sums,
                results: ParticleResults, box: int, grid: FineGrid | None) -> None:
    """Add the significant pass-2 samples (M of them) into the sums, one index_add per statistic."""
    win = st.fine_window
    n_b = len(batch.indices)
    s, it, ir = torch.nonzero(fine.weight > 0, as_tuple=True)
    gamma = fine.weight[s, it, ir]
    b = fine.b[s]
    u = fine.rows[s, ir]  # rows of fine.proj / fine.matrices
    t_px = fine.t_fine[s, it]  # (M, 2) relative
    sigma2 = model.sigma2_noise[win.shell]
    c = batch.ctf.reshape(n_b, -1)[:, win.index]
    x0 = batch.unmasked.reshape(n_b, -1)[:, win.index]
    xm = batch.masked.reshape(n_b, -1)[:, win.index]
    k = len(win.k)
    data = torch.zeros((len(fine.proj), 2 * k), dtype=torch.float32)
    weight = torch.zeros((len(fine.proj), k), dtype=torch.float32)
    residual = torch.zeros(k, dtype=torch.float64)
    chunk = max(1, 2_000_000 // k)
    for m0 in range(0, len(gamma), chunk):
        sl = slice(m0, m0 + chunk)
        g, bb, uu = gamma[sl], b[sl], u[sl]
        ph = phases(win, t_px[sl], box)
        # back-projection: data_u += γ C X⁰ shift(t)/σ², weight_u += γ C²/σ²
        data.index_add_(0, uu, _real_cat(g[:, None] * c[bb] * x0[bb] * ph / sigma2))
        weight.index_add_(0, uu, (g[:, None] * c[bb] ** 2 / sigma2).to(torch.float32))
        if not st.maxcc:  # σ²: Σγ|C·P − shift(X_masked)|² per pixel
            diff = c[bb] * fine.proj[uu].to(torch.complex128) - xm[bb] * ph
            residual += (g[:, None] * diff.abs() ** 2).sum(dim=0)
    if grid is not None:
        grid.data += data
        grid.weight += weight
    else:
        used = torch.nonzero(weight.sum(dim=1) > 0).squeeze(1)
        values = torch.complex(data[used, :k], data[used, k:])
        sums.reconstructor.insert_frequencies(values, weight[used], fine.matrices[used], win.k)
    g_img = torch.zeros(n_b, dtype=torch.float64).index_add_(0, b, gamma)
    if not st.maxcc:
        sums.sigma2.index_add_(0, win.shell, residual)
        sums.sigma2 += _beyond_window_power(batch, win, box)
        sums.n_images += float(g_img.sum())
    t_abs = (batch.offset0_px[b] + t_px) * st.pixel_size
    sums.offset_sq += float((gamma * (t_abs**2).sum(dim=1)).sum())
    np.add.at(sums.pdf_direction, fine.direction[s].numpy(), gamma.numpy())
    sums.loglik += float(fine.log_sum.sum())
    best_val = torch.full((n_b,), -1.0, dtype=torch.float64).scatter_reduce(0, b, gamma, reduce="amax")
    is_best = gamma >= best_val[b]
    pick = torch.full((n_b,), -1, dtype=torch.long)
    pick.scatter_reduce_(0, b[is_best], torch.nonzero(is_best).squeeze(1), reduce="amin", include_self=False)
    results.angles[batch.indices] = matrix_to_euler(fine.matrices[u[pick]]).numpy()
    results.offsets_px[batch.indices] = (batch.offset0_px + t_px[pick]).numpy()
    results.pmax[batch.indices] = best_val.numpy()
    results.loglik[batch.indices] = fine.log_sum.numpy() - float(torch.log(2 * torch.pi * sigma2[win.shell > 0]).sum())


def _beyond_window_power(batch: ImageBatch, win: FrequencyWindow, box: int) -> torch.Tensor:
    """Σ_b |X_b|² per shell for W/2 < i ≤ N/2 (no signal assumed there, ALGORITHM §5.5)."""
    full = FrequencyWindow.build(box, box)
    outside = full.shell > win.size // 2
    power = (batch.masked.reshape(len(batch.indices), -1)[:, full.index[outside]].abs() ** 2).sum(dim=0)
    out = torch.zeros(box // 2 + 1, dtype=torch.float64)
    return out.index_add_(0, full.shell[outside].clamp(max=box // 2), power)


@dataclass
class FineGrid:
    """The whole oversampled grid of a global search, projected once per iteration, with the
    back-projection sums per fine orientation.

    matrices : (R_f, 3, 3); parent : (R_f,) coarse index (children come in blocks of 8^os);
    proj : (R_f, K) complex64 at the fine window; data : (R_f, 2K) and weight : (R_f, K) float32 sums
    """

    matrices: torch.Tensor
    parent: torch.Tensor
    proj: torch.Tensor
    data: torch.Tensor
    weight: torch.Tensor

    @classmethod
    def build(cls, projector: Projector, cand: Candidates, oversampling: int, window: FrequencyWindow) -> FineGrid:
        every = torch.arange(len(cand.table))
        children = oversampled_children(cand.table, every.numpy(), oversampling)
        n_child = len(children) // len(cand.table)
        mats = _child_matrices(cand, every, children, n_child)
        proj = projector.project_frequencies(mats, window.k)
        k = len(window.k)
        return cls(mats, every.repeat_interleave(n_child), proj, torch.zeros((len(mats), 2 * k)),
                   torch.zeros((len(mats), k)))

    @staticmethod
    def fits(n_coarse: int, oversampling: int, window: FrequencyWindow, budget_bytes: float = 1.5e9) -> bool:
        return n_coarse * 8**oversampling * len(window.k) * 24 < budget_bytes

    def insert_into(self, sums: Sums, window: FrequencyWindow) -> None:
        used = torch.nonzero(self.weight.sum(dim=1) > 0).squeeze(1)
        k = self.weight.shape[1]
        data = torch.complex(self.data[used, :k], self.data[used, k:])
        sums.reconstructor.insert_frequencies(data, self.weight[used], self.matrices[used], window.k)


DENSE_BYTES = 2.5e8  # scores per image group in the dense pass 2


def _dense_fine(batch, model, st, significant, prior_t, cand, grid: FineGrid, sums, results, box) -> None:
    win = st.fine_window
    n_b = len(batch.indices)
    w = noise_weights(win, model.sigma2_noise, st.maxcc)
    sigma2 = model.sigma2_noise[win.shell]
    x = batch.masked.reshape(n_b, -1)[:, win.index]
    x0 = batch.unmasked.reshape(n_b, -1)[:, win.index]
    c = batch.ctf.reshape(n_b, -1)[:, win.index]
    t_child = torch.from_numpy(translation_children(st.offset_step_px, st.oversampling))
    n_tc = len(t_child)
    t_all = (st.translations_px[:, None, :] + t_child[None]).reshape(-1, 2)  # (T4, 2), parent t = i // n_tc
    t_parent = torch.arange(len(t_all)) // n_tc
    shifts = phases(win, t_all, box)  # (T4, K)
    p_real = _real_cat(grid.proj)  # (R_f, 2K)
    p_abs2 = (grid.proj.abs() ** 2).to(torch.float32)
    log_prior_r = cand.log_prior[grid.parent].to(torch.float32)
    n_f, n_t4 = len(grid.parent), len(t_all)
    group = max(1, int(DENSE_BYTES // (n_t4 * n_f * 4)))
    for g0 in range(0, n_b, group):
        g = torch.arange(g0, min(n_b, g0 + group))
        y = x[g][:, None, :] * shifts[None]  # (G, T4, K)
        a = _real_cat(y * (w * c[g])[:, None, :]).reshape(-1, 2 * len(w))
        cross = _gemm(a, p_real.T).reshape(len(g), n_t4, n_f)
        term1 = (w * c[g] ** 2).to(torch.float32) @ p_abs2.T  # (G, R_f)
        term2 = (w * x[g].abs() ** 2).sum(dim=1).to(torch.float32)
        if st.maxcc:
            diff2 = -cross / (torch.sqrt(term1.clamp(min=1e-30))[:, None, :] * torch.sqrt(term2)[:, None, None])
        else:
            diff2 = term1[:, None, :] - 2 * cross + term2[:, None, None]
        log_w = -diff2
        if not st.maxcc:
            log_w = log_w + prior_t[g][:, t_parent].to(torch.float32)[:, :, None] + log_prior_r[None, None, :]
        allowed = significant[g][:, t_parent][:, :, grid.parent]
        log_w = torch.where(allowed, log_w, torch.full_like(log_w, -torch.inf))
        flat = log_w.reshape(len(g), -1)
        best = flat.max(dim=1, keepdim=True).values
        if st.maxcc:
            wts = torch.zeros_like(flat)
            wts.scatter_(1, flat.argmax(dim=1, keepdim=True), 1.0)
        else:
            d = flat - best
            wts = torch.where(d < -EXP_CUTOFF, torch.zeros_like(d), torch.exp(d))
        total = wts.sum(dim=1, keepdim=True).double()
        gamma = (wts.double() / total).float()
        thr, _ = significance(gamma, st.adaptive_fraction)
        gamma = torch.where(gamma >= thr[:, None], gamma, torch.zeros_like(gamma))
        gam = gamma.reshape(len(g), n_t4, n_f)
        gam2 = gam.reshape(-1, n_f)
        inv_s2 = 1.0 / sigma2
        z = _real_cat(x0[g][:, None, :] * shifts[None] * (c[g] * inv_s2)[:, None, :]).reshape(-1, 2 * len(w))
        grid.data += gam2.T @ z
        per_rot = gam.sum(dim=1)  # (G, R_f)
        grid.weight += per_rot.T @ (c[g] ** 2 * inv_s2).to(torch.float32)
        g_img = gamma.sum(dim=1).double()
        if not st.maxcc:
            s1 = (per_rot @ p_abs2).double() * c[g] ** 2
            s2 = x[g].abs() ** 2 * g_img[:, None]
            q = (gam2 @ p_real).double()  # (G·T4, 2K)
            k = q.shape[1] // 2
            q = torch.complex(q[:, :k], q[:, k:]).reshape(len(g), n_t4, k)
            s3 = (y.conj() * q).real.sum(dim=1) * c[g]
            sums.sigma2.index_add_(0, win.shell, (s1 + s2 - 2 * s3).sum(dim=0))
            sums.sigma2 += _beyond_window_power(batch.subset(g), win, box)
            sums.n_images += float(g_img.sum())
        t_abs = (batch.offset0_px[g][:, None, :] + t_all[None]) * st.pixel_size  # (G, T4, 2)
        sums.offset_sq += float((gam.sum(dim=2).double() * (t_abs**2).sum(-1)).sum())
        np.add.at(sums.pdf_direction, cand.table.direction[grid.parent.numpy()], per_rot.sum(dim=0).double().numpy())
        sums.loglik += float((best.squeeze(1).double() + torch.log(total.squeeze(1))).sum())
        pick = gamma.argmax(dim=1)
        it, ir = pick // n_f, pick % n_f
        rows = batch.indices[g.numpy()]
        results.angles[rows] = matrix_to_euler(grid.matrices[ir]).numpy()
        results.offsets_px[rows] = (batch.offset0_px[g] + t_all[it]).numpy()
        results.pmax[rows] = gamma.max(dim=1).values.double().numpy()
        results.loglik[rows] = (best.squeeze(1).double() + torch.log(total.squeeze(1))).numpy() - float(
            torch.log(2 * torch.pi * sigma2[win.shell > 0]).sum())
