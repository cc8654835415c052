"""`ember class2d`: reference-free 2D classification (RELION `relion_refine --K K` with 2D references,
ALGORITHM §7.2).

Start: every particle gets a random in-plane rotation and a random class; the K CTF-corrected
averages of these random subsets are the first references. Each iteration: τ²_k from the power of
average k → E-step marginalising over class, in-plane rotation and translation (the shared engine
with 2D references) → M-step (2D Wiener filter with T·τ²_k, σ², σ_offset, π_k) → optional
re-centring of the averages → new resolution → write `run_itNNN_*`.
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
from scipy.ndimage import center_of_mass, shift

from ember.errors import EmberInputError
from ember.inference.engine import run_expectation, run_expectation_assigned
from ember.inference.estep import EStepSettings
from ember.inference.images import FrequencyWindow
from ember.inference.model import Model, ParticleResults, SamplingState, Sums
from ember.inference.mstep import ReferencePowerTau2, first_per_group, initial_sigma2, maximise, reference_tau2
from ember.inference.sampling import next_perturbation, translation_grid
from ember.inference.schedule import AutoRefineState, current_size, resolution_from_ssnr
from ember.io.mrc import read_stack
from ember.io.particles import ParticleDataSet
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
from ember.operators.projector import Projector
from ember.report.plots import plot_class_montage, plot_class_sizes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Class2DConfig:
    """Settings (RELION's Class2D GUI defaults: T = 2, 6° and 1 px after oversampling). As on
    RELION's command line, `psi_step_deg` and `offset_step_px` are the coarse steps (degrees,
    pixels); the fine ones are 2^oversampling times smaller. Diameter and resolutions in Å."""

    star: Path
    output: Path
    n_classes: int
    particle_diameter_angstrom: float
    iterations: int = 25
    psi_step_deg: float = 12.0
    oversampling: int = 1
    offset_range_px: float = 5.0
    offset_step_px: float = 2.0
    tau2_fudge: float = 2.0
    ini_high_angstrom: float | None = None
    sigma_offset_angstrom: float = 10.0
    center_classes: bool = True
    fast_subsets: bool = False
    perturb: float = 0.5
    adaptive_fraction: float = 0.999
    maxsig: int | None = None
    ctf: bool = True
    batch_size: int = 64
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    continue_from: Path | None = None

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise EmberInputError(None, f"--K must be ≥ 1 (got {self.n_classes})", "")
        if self.particle_diameter_angstrom <= 0:
            raise EmberInputError(None, "--particle_diameter must be > 0 Å", "")
        if self.iterations < 1:
            raise EmberInputError(None, f"--iter must be ≥ 1 (got {self.iterations})", "")
        if not 0 < self.psi_step_deg <= 90:
            raise EmberInputError(None, f"--psi_step must be in (0, 90] degrees (got {self.psi_step_deg})", "")
        if self.offset_step_px <= 0 or self.offset_range_px < 0:
            raise EmberInputError(None, "--offset_step must be > 0 and --offset_range ≥ 0 (pixels)", "")


@dataclass
class Run(ParticleRun):
    """What the loop carries between iterations; `history` (iterations, K) holds π_k per iteration."""

    cfg: Class2DConfig
    dataset: ParticleDataSet
    model: Model
    state: AutoRefineState
    results: ParticleResults
    ave_pmax: float = 0.0
    history: list[list[float]] = field(default_factory=list)


def class2d(cfg: Class2DConfig, progress=None) -> Path:
    """Run the classification; returns the last iteration's class averages (.mrcs)."""
    select_device(cfg.device, cfg.threads)
    run = resume(cfg) if cfg.continue_from else start(cfg, progress)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    write_job_json(out, "class2d", cfg)
    while run.state.iteration < cfg.iterations:
        run.state.iteration += 1
        t0 = time.perf_counter()
        iterate(run, progress)
        logger.info("iteration %d: resolution %.2f Å, <Pmax> %.3f, largest classes %s, %.0f s", run.state.iteration,
                    resolution_angstrom(run.state.resolution_shell, run.box, run.pixel), run.ave_pmax,
                    " ".join(f"{100 * p:.1f} %" for p in np.sort(run.model.class_prior)[::-1][:4]),
                    time.perf_counter() - t0)
    run.dataset.close()
    return out / f"run_it{run.state.iteration:03d}_classes.mrcs"


def start(cfg: Class2DConfig, progress=None) -> Run:
    """Random in-plane rotations and random classes; the first references are the unregularised
    CTF-corrected averages of those random subsets (RELION `calculateSumOfPowerSpectraAndAverageImage`)."""
    dataset = ParticleDataSet.from_star(cfg.star)
    n, box, pixel = len(dataset), dataset.box, dataset.pixel_size
    if n < cfg.n_classes:
        raise EmberInputError(cfg.star, f"{n} particles for {cfg.n_classes} classes", "ask for fewer classes (--K)")
    radius = cfg.particle_diameter_angstrom / (2 * pixel)
    sigma2 = initial_sigma2(dataset, first_per_group(dataset), radius)
    zero = torch.zeros((box, box), dtype=torch.float64)
    model = Model.initial([zero] * cfg.n_classes, sigma2, cfg.sigma_offset_angstrom, np.ones(1),
                          int(dataset.group_numbers().max()))
    rng = np.random.default_rng([cfg.seed, 0])
    results = ParticleResults.empty(n, cfg.n_classes)
    results.angles[:, 2] = rng.uniform(0, 360, size=n)
    results.offsets_px[:] = dataset.offsets_px()
    classes = rng.permutation(n) % cfg.n_classes
    win = FrequencyWindow.build(box, box)
    settings = EStepSettings(win, win, torch.zeros((1, 2), dtype=torch.float64), 1.0, 0, pixel)
    sums = Sums.empty(box, cfg.n_classes, dataset.n_optics_groups, 1, n_scale_groups=len(model.scale), ndim=2)
    sampling = SamplingState(0, 0, 0.0, 1.0, np.zeros(1, dtype=np.int64), psi_step_deg=cfg.psi_step_deg)
    run_expectation_assigned(dataset, np.arange(n), classes, model, sampling, settings, sums, results,
                             prior_angles_deg=results.angles.copy(), prior_offsets_px=results.offsets_px.copy(),
                             symmetry=torch.eye(3, dtype=torch.float64)[None], mask_radius_px=radius,
                             batch_size=cfg.batch_size, use_ctf=cfg.ctf, fixed_poses=True, device=cfg.device)
    model.references = [rec.reconstruct().double() for rec in sums.reconstructors]
    if cfg.ini_high_angstrom:
        ini_shell = shell_of_resolution(cfg.ini_high_angstrom, box, pixel)
    else:
        ini_shell = max(5, math.floor(box / 4))
    state = AutoRefineState(iteration=0, healpix_order=0, oversampling=cfg.oversampling,
                            offset_range_px=cfg.offset_range_px, offset_step_px=cfg.offset_step_px,
                            resolution_shell=ini_shell, best_resolution_shell=ini_shell)
    return Run(cfg, dataset, model, state, results)


def subset_size(iteration: int, n: int, n_classes: int, total_iterations: int, fast: bool) -> int:
    """Particles used in this iteration: all, or with `--fast_subsets` (≥ 20 iterations) 100·K in
    iterations 1–5, 3× that in 6–10, max(3×, 30 %) in 11–15, then all (RELION `updateSubsetSize`)."""
    if not fast or total_iterations < 20:
        return n
    base = 100 * n_classes
    size = base if iteration <= 5 else 3 * base if iteration <= 10 else max(3 * base, int(0.3 * n)) \
        if iteration <= 15 else n
    return min(size, n)


def iterate(run: Run, progress=None) -> None:
    """One iteration: E-step over the (subset of) particles, M-step, re-centring, write."""
    cfg, st, box, pixel = run.cfg, run.state, run.box, run.pixel
    rng = np.random.default_rng([cfg.seed, st.iteration])
    n = len(run.dataset)
    rows = np.sort(rng.permutation(n)[: subset_size(st.iteration, n, cfg.n_classes, cfg.iterations, cfg.fast_subsets)])
    st.current_size = current_size(st, box, run.ave_pmax)
    win = FrequencyWindow.build(box, st.current_size)
    model = run.model
    tau2 = torch.stack([reference_tau2(Projector.from_image(r)) for r in model.references])
    model.rho = next_perturbation(model.rho, cfg.perturb, rng)
    trans = torch.from_numpy(translation_grid(st.offset_range_px, st.offset_step_px)) + model.rho * st.offset_step_px
    settings = EStepSettings(win, win, trans, st.offset_step_px, cfg.oversampling, pixel, cfg.adaptive_fraction,
                             maxsig=cfg.maxsig)
    sampling = SamplingState(0, cfg.oversampling, st.offset_range_px, st.offset_step_px, np.zeros(1, dtype=np.int64),
                             psi_step_deg=cfg.psi_step_deg)
    sums = Sums.empty(box, cfg.n_classes, run.dataset.n_optics_groups, 1, r_max=st.current_size // 2,
                      n_scale_groups=len(model.scale), ndim=2)
    if progress is not None and hasattr(progress, "describe"):
        progress.describe(f"it {st.iteration}/{cfg.iterations} · {len(rows)} particles")
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(done, len(rows))

    run_expectation(run.dataset, rows, model, sampling, settings, sums, run.results,
                    prior_angles_deg=run.results.angles.copy(), prior_offsets_px=run.results.offsets_px.copy(),
                    symmetry=torch.eye(3, dtype=torch.float64)[None], mask_radius_px=run.mask_radius_px,
                    batch_size=cfg.batch_size, use_ctf=cfg.ctf, progress=tick, device=cfg.device)
    run.ave_pmax = float(run.results.pmax[rows].mean())
    new = maximise(model, sums, ReferencePowerTau2(tau2, cfg.tau2_fudge), symmetry=torch.eye(3)[None],
                   mask_radius_px=run.mask_radius_px)
    for k in np.flatnonzero(new.class_prior <= 0):
        new.references[k] = torch.zeros_like(new.references[k])
    if cfg.center_classes:
        new.references = [center_class(r) for r in new.references]
    run.model = new
    st.resolution_shell = resolution_from_ssnr(new.ssnr, new.class_prior)
    run.history.append(new.class_prior.tolist())
    write_outputs(run, f"run_it{st.iteration:03d}")


def center_class(average: torch.Tensor) -> torch.Tensor:
    """Translate a class average (N, N) so that the centre of mass of its positive density is at
    pixel N/2 (RELION `--center_classes`)."""
    img = average.numpy()
    positive = np.clip(img, 0, None)
    if positive.sum() <= 0:
        return average
    com = np.array(center_of_mass(positive))
    return torch.from_numpy(shift(img, img.shape[0] // 2 - com, order=3, mode="constant"))


def write_outputs(run: Run, prefix: str) -> None:
    """run_itNNN_classes.mrcs, run_itNNN_data.star (class, psi, offsets), run_itNNN_model.star,
    run_itNNN_state.json, class_sizes.png and classes.png (averages sorted by size)."""
    out, box, pixel, st, model = Path(run.cfg.output), run.box, run.pixel, run.state, run.model
    groups = run.dataset.group_numbers()
    data = data_table(run.dataset.table, run.results, None, pixel, run.dataset.image_names_relative_to(out),
                      groups, run.dataset.column("rlnNormCorrection", 1.0))
    data.particles = data.particles.drop(columns=["rlnAngleRot", "rlnAngleTilt"])
    names = [f"{k + 1:06d}@{prefix}_classes.mrcs" for k in range(model.n_classes)]
    blocks = model_blocks(model, st, box=box, pixel=pixel, map_names=names, ave_pmax=run.ave_pmax,
                          loglik=float(run.results.loglik.sum()), acc_rot=999.0, acc_trans_angstrom=999.0,
                          tau2_fudge=run.cfg.tau2_fudge, group_counts=np.bincount(groups - 1), ref_dim=2)
    state = {"config": config_dict(run.cfg),
             "state": st.to_dict(), "ave_pmax": run.ave_pmax, "history": run.history,
             "angles": run.results.angles[:, 2].tolist(), "models": [model_to_json(model)]}
    stack = torch.stack([r.float() for r in model.references])
    write_iteration(out, prefix, maps={"classes": stack}, pixel=pixel, data=data, models={"": blocks}, state=state,
                    map_suffix=".mrcs")
    plot_class_sizes(out / "class_sizes.png", np.array(run.history))
    counts = np.bincount(run.results.classes, minlength=model.n_classes)
    plot_class_montage(out / "classes.png", stack.numpy(), counts)
    report = job_report("class2d", f"class2d: iteration {st.iteration} ({out.name})", run.cfg)
    add_iteration_numbers(report, st, n_particles=len(run.dataset), ave_pmax=run.ave_pmax,
                          sigma_offset_angstrom=model.sigma_offset_angstrom, pixel=pixel, angular_step_deg=None)
    report.number("in-plane sampling", f"{run.cfg.psi_step_deg / 2 ** run.cfg.oversampling:.2f}° (fine)")
    add_class_numbers(report, model, counts, box=box, pixel=pixel)
    report.figure("Class averages, largest first (class number: particles).", out / "classes.png")
    report.figure("Class sizes π_k per iteration.", out / "class_sizes.png")
    add_model_figures(report, model, box=box, pixel=pixel, labels=[])
    report.write(out / "report.html")


def resume(cfg: Class2DConfig) -> Run:
    """Rebuild the loop from a `run_itNNN_state.json` with its class averages and data.star."""
    path = Path(cfg.continue_from)
    if not path.exists():
        raise EmberInputError(path, "file not found", "give a run_itNNN_state.json written by class2d")
    saved = json.loads(path.read_text())
    if "angles" not in saved:
        raise EmberInputError(path, "not a class2d state file", "give a run_itNNN_state.json written by class2d")
    prefix = path.name.removesuffix("_state.json")
    dataset = ParticleDataSet.from_star(path.parent / f"{prefix}_data.star")
    stack, _ = read_stack(path.parent / f"{prefix}_classes.mrcs")
    model = model_from_json(saved["models"][0], [torch.from_numpy(np.array(img)).double() for img in stack])
    results = ParticleResults.empty(len(dataset), model.n_classes)
    results.angles[:, 2] = saved["angles"]
    results.offsets_px[:] = dataset.offsets_px()
    results.classes[:] = dataset.column("rlnClassNumber", 1).astype(int) - 1
    results.pmax[:] = dataset.column("rlnMaxValueProbDistribution", 0.0)
    return Run(cfg, dataset, model, AutoRefineState(**saved["state"]), results, saved["ave_pmax"], saved["history"])
