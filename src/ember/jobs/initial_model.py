"""`ember initial-model`: a 3D map from the particles alone (RELION 4/5 VDAM, ALGORITHM §8.1).

Start from random Gaussian blobs scaled like the average of random subsets. Each iteration is one
mini-batch: E-step of two pseudo half-sets against the current map(s) on the shared engine, which
back-projects the residuals X − C·P V̂ → per-half gradients g_h = Σγ·C·(X − C·P V̂)/σ² / max(1, Σγ·C²/σ²)
in the (unpadded, as RELION's `--pad 1`) Fourier grid →
adaptive moments (m1 per half, m2 from their difference) → an FSC estimate from the moments →
V̂ ← V̂ + η_k·(F·ĝ − (1 − F)·V̂) → solvent flattening; σ², σ_offset and π_k follow running averages
(μ = 0.9). Step size, T and mini-batch size follow RELION's schedules. The maps are built in C1;
with `--sym` the largest class is moved onto the group's axes and averaged over the group for
`initial_model.mrc` (`align_maps.align_to_symmetry`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ember.errors import EmberInputError
from ember.inference.accuracy import expected_accuracy
from ember.inference.engine import run_expectation, run_expectation_assigned
from ember.inference.estep import EStepSettings
from ember.inference.images import FrequencyWindow
from ember.inference.model import Model, ParticleResults, SamplingState, Sums
from ember.inference.mstep import (
    MIN_SIGMA2_OFFSET,
    first_per_group,
    initial_sigma2,
    reference_tau2,
    solvent_mask,
    update_sigma2,
)
from ember.inference.sampling import (
    angular_step_deg,
    asymmetric_unit,
    next_perturbation,
    translation_grid,
    uniform_direction_pdf,
)
from ember.inference.schedule import (
    AutoRefineState,
    coarse_size,
    current_size,
    resolution_from_ssnr,
    update_sampling,
)
from ember.io.atomic import atomic_path
from ember.io.mrc import write_map
from ember.io.particles import ParticleDataSet
from ember.jobs.align_maps import align_to_symmetry
from ember.jobs.common import ParticleRun, config_dict, job_report, select_device, write_job_json
from ember.jobs.refine_io import (
    add_class_numbers,
    add_iteration_numbers,
    add_model_figures,
    data_table,
    model_blocks,
    model_from_json,
    model_to_json,
    write_iteration,
)
from ember.maths.fourier import resolution_angstrom, shell_of_resolution
from ember.maths.rotations import matrix_to_euler, random_rotations
from ember.maths.symmetry import symmetry_generators, symmetry_operators
from ember.operators.filters import lowpass_ini_high
from ember.operators.masks import soft_mask_outside
from ember.operators.projector import Projector
from ember.operators.reconstructor import Reconstructor
from ember.report.html import Report
from ember.report.plots import plot_class_projections, plot_class_sizes, plot_resolution_history

logger = logging.getLogger(__name__)

LAMBDA1, LAMBDA2 = 0.9, 0.999  # first and second moment decay (RELION)
MU = 0.9  # running-average momentum of σ², σ_offset, π_k (RELION --mu)
AUTO_SAMPLING_EVERY = 10  # mini-batches between sampling updates (RELION 5, gradient refinement)
LOCAL_SEARCH_ORDER = 4  # auto-sampling stops below the order of local searches (HEALPix 3: 3.75° fine)


@dataclass(frozen=True)
class InitialModelConfig:
    """Settings (RELION's initial-model GUI command). Offsets in pixels; diameter and resolutions in Å."""

    star: Path
    output: Path
    particle_diameter_angstrom: float
    n_classes: int = 1
    symmetry: str = "C1"
    iterations: int = 200
    pad: int = 1
    tau2_fudge: float = 4.0
    step_size: float = 0.5
    healpix_order: int = 1
    auto_sampling: bool = True
    oversampling: int = 1
    offset_range_px: float = 6.0
    offset_step_px: float = 2.0
    ini_high_angstrom: float = 30.0
    sigma_offset_angstrom: float = 10.0
    ini_fraction: float = 0.3
    fin_fraction: float = 0.2
    ctf: bool = True
    batch_size: int = 64
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    continue_from: Path | None = None

    def __post_init__(self) -> None:
        if self.particle_diameter_angstrom <= 0:
            raise EmberInputError(None, "--particle_diameter must be > 0 Å", "")
        if self.n_classes < 1 or self.iterations < 1:
            raise EmberInputError(None, "--K and --iter must be ≥ 1", "")
        if self.pad not in (1, 2):
            raise EmberInputError(None, f"--pad {self.pad} is not supported", "use --pad 1 (RELION's) or 2")
        symmetry_operators(self.symmetry)  # a known point group, or a one-line error


@dataclass
class Moments:
    """Adaptive moments per class on the padded Fourier grid: m1 per pseudo half (2, K, ...) complex,
    m2 (K, ...) real, starting at 1 (RELION MOM2_INIT_CONSTANT); `started` whether m1 holds a
    gradient yet."""

    m1: torch.Tensor
    m2: torch.Tensor
    started: bool = False


@dataclass
class Run(ParticleRun):
    cfg: InitialModelConfig
    dataset: ParticleDataSet
    model: Model
    state: AutoRefineState
    results: ParticleResults
    moments: Moments
    directions: np.ndarray
    history: list[list[float]] = field(default_factory=list)
    resolutions: list[float] = field(default_factory=list)


def initial_model(cfg: InitialModelConfig, progress=None) -> Path:
    """Run VDAM; writes `initial_model.mrc` (the largest class) and returns its path."""
    select_device(cfg.device, cfg.threads)
    run = resume(cfg) if cfg.continue_from else start(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    write_job_json(out, "initial-model", cfg)
    t0 = time.perf_counter()
    while run.state.iteration < cfg.iterations:
        run.state.iteration += 1
        iterate(run)
        if progress:
            progress(run.state.iteration, cfg.iterations)
        if run.state.iteration % 10 == 0 or run.state.iteration == cfg.iterations:
            logger.info("iteration %d: resolution %.1f Å, mini-batch %d, classes %s %%, %.0f s", run.state.iteration,
                        run.resolutions[-1], batch_size(run.state.iteration, len(run.dataset), cfg),
                        " ".join(f"{100 * p:.0f}" for p in run.model.class_prior), time.perf_counter() - t0)
    best = int(np.argmax(run.model.class_prior))
    final = run.model.references[best].float().numpy()
    if len(symmetry_generators(cfg.symmetry)):  # built in C1: onto the group's axes, then averaged over it
        fit = align_to_symmetry(final, run.pixel, cfg.symmetry, seed=cfg.seed)
        logger.info("class %d moved onto the %s axes (correlation with its symmetry mates %.3f) and symmetrised",
                    best + 1, cfg.symmetry.upper(), fit.score)
        final = fit.symmetrised
    write_map(out / "initial_model.mrc", final, run.pixel)
    run.dataset.close()
    return out / "initial_model.mrc"


def phases(cfg: InitialModelConfig) -> tuple[int, int, int]:
    """(n_ini, n_mid, n_fin) iterations of the three phases (RELION `parseInitial`)."""
    n_ini = round(cfg.ini_fraction * cfg.iterations)
    n_fin = round(cfg.fin_fraction * cfg.iterations)
    return n_ini, cfg.iterations - n_ini - n_fin, n_fin


def batch_size(iteration: int, n: int, cfg: InitialModelConfig) -> int:
    """Mini-batch size: clamp(0.005·N, 200, 5000) → linear ramp → clamp(0.1·N, 1000, 50000)
    (ALGORITHM §8.1.2), at most N; all particles in the last iteration when K > 1."""
    n_ini, n_mid, _ = phases(cfg)
    s_ini = int(np.clip(0.005 * n, 200, 5000))
    s_fin = int(np.clip(0.1 * n, 1000, 50000))
    if iteration == cfg.iterations and cfg.n_classes > 1:
        return n
    if iteration < n_ini:
        size = s_ini
    elif iteration < n_ini + n_mid:
        size = s_ini + round((iteration - n_ini) / max(n_mid, 1) * (s_fin - s_ini))
    else:
        size = s_fin
    return min(size, n)


def step_size(iteration: int, cfg: InitialModelConfig) -> float:
    """η(x) = η₀·[r·σ(x) + (1 − σ(x))], σ(x) = 1/(10^((x − n_ini − a/4)/(a/8)) + 1), r = 0.9/η₀."""
    n_ini, a, _ = phases(cfg)
    s = 1.0 / (10 ** np.clip((iteration - n_ini - a / 4) / max(a / 8, 1e-9), -30, 30) + 1)
    return float(cfg.step_size * ((0.9 / cfg.step_size) * s + (1 - s)))


def tau2_fudge(iteration: int, cfg: InitialModelConfig) -> float:
    """T(x) = T₀/T₀·σ'(x) + T₀·(1 − σ'(x)), σ'(x) = 1/(10^((x − n_ini − a/8)/(a/16)) + 1): 1 → T₀."""
    n_ini, a, _ = phases(cfg)
    s = 1.0 / (10 ** np.clip((iteration - n_ini - a / 8) / max(a / 16, 1e-9), -30, 30) + 1)
    return float(1.0 * s + cfg.tau2_fudge * (1 - s))


def start(cfg: InitialModelConfig) -> Run:
    """Random blobs with the amplitude and spread of the average of random subsets."""
    dataset = ParticleDataSet.from_star(cfg.star)
    n, box, pixel = len(dataset), dataset.box, dataset.pixel_size
    radius = cfg.particle_diameter_angstrom / (2 * pixel)
    sigma2 = initial_sigma2(dataset, first_per_group(dataset), radius)
    directions = asymmetric_unit(cfg.healpix_order, symmetry_operators("C1"))
    pdf = np.full(12 * 4**cfg.healpix_order, 1.0 / (12 * 4**cfg.healpix_order))
    zero = torch.zeros((box, box, box), dtype=torch.float64)
    model = Model.initial([zero] * cfg.n_classes, sigma2, cfg.sigma_offset_angstrom, pdf,
                          int(dataset.group_numbers().max()), pad=cfg.pad)
    rng = np.random.default_rng([cfg.seed, 0])
    results = ParticleResults.empty(n, cfg.n_classes)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    results.angles[:] = matrix_to_euler(random_rotations(n, gen)).numpy()
    results.offsets_px[:] = dataset.offsets_px()
    ini_shell = shell_of_resolution(cfg.ini_high_angstrom, box, pixel)
    averages = _random_subset_averages(dataset, results, model, rng.permutation(n) % cfg.n_classes, radius, cfg)
    model.references = [_blobs(avg, radius, cfg.ini_high_angstrom, pixel, rng) for avg in averages]
    state = AutoRefineState(iteration=0, healpix_order=cfg.healpix_order, oversampling=cfg.oversampling,
                            offset_range_px=cfg.offset_range_px, offset_step_px=cfg.offset_step_px,
                            resolution_shell=ini_shell, best_resolution_shell=ini_shell)
    shape = Projector.from_volume(zero, pad=cfg.pad).spectrum.shape
    moments = Moments(torch.zeros((2, cfg.n_classes, *shape), dtype=torch.complex128),
                      torch.ones((cfg.n_classes, *shape), dtype=torch.float64))
    return Run(cfg, dataset, model, state, results, moments, directions)


def _random_subset_averages(dataset, results, model, classes, radius, cfg) -> list[torch.Tensor]:
    """Unregularised CTF-corrected reconstructions of each class's particles at their random poses."""
    box = dataset.box
    win = FrequencyWindow.build(box, box)
    settings = EStepSettings(win, win, torch.zeros((1, 2), dtype=torch.float64), 1.0, 0, dataset.pixel_size)
    sums = Sums.empty(box, cfg.n_classes, dataset.n_optics_groups, 12 * 4**cfg.healpix_order,
                      n_scale_groups=len(model.scale), pad=model.pad)
    sampling = SamplingState(cfg.healpix_order, 0, 0.0, 1.0, np.arange(12 * 4**cfg.healpix_order))
    rows = np.arange(min(len(dataset), 1000 * cfg.n_classes))
    run_expectation_assigned(dataset, rows, classes[rows], model, sampling, settings, sums, results,
                             prior_angles_deg=results.angles.copy(), prior_offsets_px=results.offsets_px.copy(),
                             symmetry=torch.eye(3, dtype=torch.float64)[None], mask_radius_px=radius,
                             batch_size=cfg.batch_size, use_ctf=cfg.ctf, fixed_poses=True, device=cfg.device)
    return [rec.reconstruct().double() for rec in sums.reconstructors]


def _blobs(average: torch.Tensor, radius_px: float, ini_high_angstrom: float, pixel: float,
           rng: np.random.Generator) -> torch.Tensor:
    """40 positive minus half of 40 negative Gaussian blobs (centres ~ N(centre, D/6), amplitudes
    |average| there, width D/10), scaled to the average's standard deviation, low-passed to
    ini_high and softly masked (RELION `make_blobs_3d`)."""
    n = average.shape[0]
    diameter = 2 * radius_px
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64),) * 3, indexing="ij"), -1)

    def blobs() -> torch.Tensor:
        centres = rng.normal(n // 2, diameter / 6, size=(40, 3))
        idx = np.clip(centres.astype(int), 0, n - 1)
        amp = np.abs(average.numpy()[idx[:, 0], idx[:, 1], idx[:, 2]])
        d2 = ((grid[None] - torch.from_numpy(centres)[:, None, None, None]) ** 2).sum(-1) * (10 / diameter) ** 2
        return (torch.from_numpy(amp)[:, None, None, None] * torch.exp(-d2)).sum(0)

    vol = blobs() - blobs() / 2
    vol = vol * (average.std() / vol.std().clamp(min=1e-30))
    vol = lowpass_ini_high(vol, ini_high_angstrom, pixel)
    return soft_mask_outside(vol, radius_px, 5.0).double()


def iterate(run: Run) -> None:
    """One mini-batch: E-step of both pseudo halves, gradient step, running averages, write."""
    cfg, st, box, pixel, model = run.cfg, run.state, run.box, run.pixel, run.model
    it = st.iteration
    rng = np.random.default_rng([cfg.seed, it])
    n = len(run.dataset)
    rows = np.sort(rng.permutation(n)[: batch_size(it, n, cfg)])
    halves = [np.sort(rows[rng.permutation(len(rows)) % 2 == h]) for h in (0, 1)]
    st.current_size = current_size(st, box, 0.0)
    fine = FrequencyWindow.build(box, st.current_size)
    if it < AUTO_SAMPLING_EVERY:
        st.nr_iter_wo_resol_gain = 0
    elif cfg.auto_sampling and it % AUTO_SAMPLING_EVERY == 0:
        _auto_sampling(run, fine)
    old_offsets = run.results.offsets_px[rows].copy()
    w_c = coarse_size(st.healpix_order, cfg.particle_diameter_angstrom, box, pixel, st.current_size)
    coarse = FrequencyWindow.build(box, w_c)
    model.rho = next_perturbation(model.rho, 0.5, rng)
    trans = torch.from_numpy(translation_grid(st.offset_range_px, st.offset_step_px)) + model.rho * st.offset_step_px
    settings = EStepSettings(coarse, fine, trans, st.offset_step_px, st.oversampling, pixel, maxsig=100 * cfg.n_classes,
                             residual_sums=True)
    sampling = SamplingState(st.healpix_order, st.oversampling, st.offset_range_px, st.offset_step_px, run.directions)
    sums = []
    for h in (0, 1):
        s = Sums.empty(box, cfg.n_classes, run.dataset.n_optics_groups, len(model.pdf_direction[0]),
                       r_max=st.current_size // 2, n_scale_groups=len(model.scale), pad=model.pad)
        run_expectation(run.dataset, halves[h], model, sampling, settings, s, run.results,
                        prior_angles_deg=run.results.angles.copy(), prior_offsets_px=run.results.offsets_px.copy(),
                        symmetry=torch.eye(3, dtype=torch.float64)[None], mask_radius_px=run.mask_radius_px,
                        batch_size=cfg.batch_size, use_ctf=cfg.ctf, device=cfg.device)
        sums.append(s)
    t = tau2_fudge(it, cfg)
    eta = step_size(it, cfg)
    joint = sums[0] + sums[1]
    prior = _running(model.class_prior, joint.class_weight / max(joint.class_weight.sum(), 1e-300))
    ssnr = []
    for k in range(cfg.n_classes):
        recs = [s.reconstructors[k] for s in sums]
        projector = Projector.from_volume(model.references[k], pad=model.pad, dtype=torch.complex128)
        tau2 = reference_tau2(projector)
        spectrum = gradient_step(projector, recs, run.moments, k, t, eta * (1 - math.exp(-(3 * cfg.n_classes + 10)
                                                                                          * prior[k])))
        volume = Projector(spectrum, box, projector.pad, projector.r_max).volume()
        model.references[k] = volume * solvent_mask(box, run.mask_radius_px)
        both = Reconstructor(box, pad=model.pad, r_max=st.current_size // 2)
        both.add_prepared(*recs)
        s2 = both.sigma2_ref()
        ssnr.append(torch.where(s2 > 0, t * tau2 / s2.clamp(min=1e-300), torch.zeros_like(s2)))
    run.moments.started = True
    _update_other_parameters(model, joint, prior)
    model.ssnr = torch.stack(ssnr)
    model.tau2 = torch.stack([reference_tau2(Projector.from_volume(r, pad=model.pad)) for r in model.references])
    shell = resolution_from_ssnr(model.ssnr, model.class_prior)
    st.nr_iter_wo_resol_gain = st.nr_iter_wo_resol_gain + 1 if shell <= st.resolution_shell else 0
    st.resolution_shell = shell
    st.offset_change_px = float(np.sqrt(((run.results.offsets_px[rows] - old_offsets) ** 2).sum(1).mean() / 2))
    run.history.append(model.class_prior.tolist())
    run.resolutions.append(resolution_angstrom(st.resolution_shell, box, pixel))
    write_outputs(run, f"run_it{it:03d}", with_data=it % 10 == 0 or it == cfg.iterations)


def _auto_sampling(run: Run, window: FrequencyWindow) -> None:
    """RELION 5's `--auto_sampling` for gradient refinement, every 10 mini-batches: the expected
    accuracies (§6.4) of 100 random particles at their current poses, best over classes; then
    finer angles and translations when the resolution stalled in the last mini-batch and the fine
    step is not yet below 75 % of the accuracy — never into local searches."""
    st, model, cfg = run.state, run.model, run.cfg
    rng = np.random.default_rng([cfg.seed, st.iteration, 1])
    sample = np.sort(rng.choice(len(run.dataset), size=min(100, len(run.dataset)), replace=False))
    sigma2 = model.sigma2_noise.mean(dim=0)[: run.box // 2 + 1]
    acc = [expected_accuracy(Projector.from_volume(ref, r_max=window.size // 2, pad=model.pad), sigma2, run.dataset,
                             sample, run.results.angles[sample], window, rng, cfg.ctf) for ref in model.references]
    st.acc_rot_deg = min(a for a, _ in acc)
    st.acc_trans_px = min(t for _, t in acc)
    before = (st.healpix_order, st.offset_step_px, st.offset_range_px)
    if update_sampling(st, st.offset_change_px, LOCAL_SEARCH_ORDER, pixel_angstrom=run.pixel,
                       gradient=True):
        run.directions = asymmetric_unit(st.healpix_order, symmetry_operators("C1"))
        model.pdf_direction = np.tile(uniform_direction_pdf(st.healpix_order, run.directions), (model.n_classes, 1))
    if (st.healpix_order, st.offset_step_px, st.offset_range_px) != before:
        logger.info("iteration %d: accuracy %.1f° / %.2f px → angular step %.2f°, offsets ±%.1f px in %.2f px steps",
                    st.iteration, st.acc_rot_deg, st.acc_trans_px, angular_step_deg(st.healpix_order + st.oversampling),
                    st.offset_range_px, st.offset_step_px)


def gradient_step(projector: Projector, recs: list[Reconstructor], moments: Moments, k: int, tau2_fudge_now: float,
                  eta: float) -> torch.Tensor:
    """The VDAM update of class k's padded spectrum V̂ (P+1, P+1, P//2+1) from the two pseudo
    halves' residual sums (data = Σγ·C·(X − C·P V̂)/σ², weight = Σγ·C²/σ²; ALGORITHM §8.1.5–7);
    updates the moments in place; returns the new V̂."""
    v = projector.spectrum.to(torch.complex128)
    for r in recs:
        r.prepare()
    inside = recs[0].shells() <= recs[0].r_max
    g = [torch.where(inside, r.data / r.weight.clamp(min=1.0), torch.zeros_like(v)) for r in recs]
    m1 = moments.m1
    for h in (0, 1):
        m1[h, k] = g[h] if not moments.started else LAMBDA1 * m1[h, k] + (1 - LAMBDA1) * g[h]
    rel = (g[1] - g[0]).abs() ** 2 / ((g[0] + g[1]).abs() ** 2 / 4 + 1e-12)
    moments.m2[k] = torch.where(inside, LAMBDA2 * moments.m2[k] + (1 - LAMBDA2) * rel, moments.m2[k])
    g_hat = (m1[0, k] + m1[1, k]) / 2 / (moments.m2[k].sqrt() + 1e-12)
    shells = recs[0].shells()
    n_shells = projector.box // 2 + 1
    keep = inside & (shells < n_shells)
    count = torch.bincount(shells[keep], minlength=n_shells).double().clamp(min=1)
    signal = torch.zeros(n_shells, dtype=torch.float64).index_add_(0, shells[keep], v[keep].abs()) / count
    noise = torch.zeros(n_shells, dtype=torch.float64).index_add_(0, shells[keep], (m1[0, k] - m1[1, k])[keep].abs())
    noise = noise / count
    snr = 2 * tau2_fudge_now * signal / noise.clamp(min=1e-300)
    f = torch.where(noise > 0, (snr / (1 + snr)).clamp(max=1.0), torch.ones_like(snr))
    f_vox = f[shells.clamp(max=n_shells - 1)]
    return torch.where(inside, v + eta * (f_vox * g_hat - (1 - f_vox) * v), v)


def _running(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    return MU * old + (1 - MU) * new


def _update_other_parameters(model: Model, joint: Sums, prior: np.ndarray) -> None:
    """σ², σ_offset and π_k as running averages of their M-step values (μ = 0.9)."""
    n_img = float(joint.n_images.sum())
    if n_img > 0:
        model.sigma2_noise = MU * model.sigma2_noise + (1 - MU) * update_sigma2(joint, model.sigma2_noise)
        sigma_off = math.sqrt(max(joint.offset_sq / (2 * n_img), MIN_SIGMA2_OFFSET))
        model.sigma_offset_angstrom = MU * model.sigma_offset_angstrom + (1 - MU) * sigma_off
    model.class_prior = prior / prior.sum()


def write_outputs(run: Run, prefix: str, with_data: bool) -> None:
    """run_itNNN_classNNN.mrc, run_itNNN_model.star, run_itNNN_state.json (+ data.star every 10
    iterations and at the end), run_moments.pt (moments and maps, for --continue), progress and
    class PNGs."""
    out, box, pixel, st, model = Path(run.cfg.output), run.box, run.pixel, run.state, run.model
    groups = run.dataset.group_numbers()
    names = [f"class{k + 1:03d}" for k in range(model.n_classes)]
    data = data_table(run.dataset.table, run.results, None, pixel, run.dataset.image_names_relative_to(out),
                      groups, run.dataset.column("rlnNormCorrection", 1.0)) if with_data else None
    blocks = model_blocks(model, st, box=box, pixel=pixel, map_names=[f"{prefix}_{n}.mrc" for n in names],
                          ave_pmax=float(run.results.pmax.mean()), loglik=float(run.results.loglik.sum()),
                          acc_rot=st.acc_rot_deg, acc_trans_angstrom=st.acc_trans_px * pixel,
                          tau2_fudge=tau2_fudge(st.iteration, run.cfg),
                          group_counts=np.bincount(groups - 1))
    state = {"config": config_dict(run.cfg),
             "state": st.to_dict(), "history": run.history, "resolutions": run.resolutions,
             "angles": run.results.angles.tolist(), "offsets_px": run.results.offsets_px.tolist(),
             "models": [model_to_json(model)]}
    with atomic_path(out / "run_moments.pt") as tmp:
        torch.save({"iteration": st.iteration, "m1": run.moments.m1, "m2": run.moments.m2,
                    "references": model.references}, tmp)
    write_iteration(out, prefix, maps=dict(zip(names, model.references, strict=True)), pixel=pixel, data=data,
                    models={"": blocks}, state=state)
    if with_data:
        plot_class_sizes(out / "class_sizes.png", np.array(run.history))
        plot_resolution_history(out / "resolution.png", np.array(run.resolutions))
        labels = [f"class {k + 1} ({100 * p:.0f} %)" for k, p in enumerate(model.class_prior)]
        plot_class_projections(out / "classes.png", [r.float().numpy() for r in model.references], labels)
        _report(run).write(out / "report.html")


def _report(run: Run) -> Report:
    """report.html: resolution per iteration, class sizes, projections, sections and spectra."""
    out, st, model = Path(run.cfg.output), run.state, run.model
    report = job_report("initial-model", f"initial-model: iteration {st.iteration} ({out.name})", run.cfg)
    report.number("current resolution", f"{run.resolutions[-1]:.2f} Å" if run.resolutions else "—")
    add_iteration_numbers(report, st, n_particles=len(run.dataset), ave_pmax=float(run.results.pmax.mean()),
                          sigma_offset_angstrom=model.sigma_offset_angstrom, pixel=run.pixel,
                          angular_step_deg=angular_step_deg(st.healpix_order + st.oversampling))
    add_class_numbers(report, model, np.bincount(run.results.classes, minlength=model.n_classes), box=run.box,
                      pixel=run.pixel)
    report.figure("Current resolution per iteration.", out / "resolution.png")
    report.figure("Class sizes π_k per iteration.", out / "class_sizes.png")
    report.figure("Projections of each class map.", out / "classes.png")
    add_model_figures(report, model, box=run.box, pixel=run.pixel,
                      labels=[f"class {k + 1}" for k in range(model.n_classes)])
    return report


def resume(cfg: InitialModelConfig) -> Run:
    """Continue from the latest iteration's `run_itNNN_state.json`; the moments and the float64
    maps of the latest iteration are in run_moments.pt (float32 MRC maps would make the
    significance choices, and so the trajectory, drift)."""
    path = Path(cfg.continue_from)
    if not path.exists():
        raise EmberInputError(path, "file not found", "give a run_itNNN_state.json written by initial-model")
    saved = json.loads(path.read_text())
    moments = torch.load(path.parent / "run_moments.pt")
    if moments["iteration"] != saved["state"]["iteration"]:
        raise EmberInputError(path, "not the latest iteration (run_moments.pt holds iteration "
                              f"{moments['iteration']})", "continue from the latest run_itNNN_state.json")
    dataset = ParticleDataSet.from_star(cfg.star)
    model = model_from_json(saved["models"][0], moments["references"])
    results = ParticleResults.empty(len(dataset), model.n_classes)
    results.angles[:] = np.array(saved["angles"])
    results.offsets_px[:] = np.array(saved["offsets_px"])
    state = AutoRefineState(**saved["state"])
    return Run(cfg, dataset, model, state, results, Moments(moments["m1"], moments["m2"], True),
               asymmetric_unit(state.healpix_order, symmetry_operators("C1")), saved["history"], saved["resolutions"])
