"""`ember class3d`: multi-reference 3D classification (RELION `relion_refine --K K`, ALGORITHM §7.1).

One model of K classes from all particles, no half sets. The classes start as K copies of one
reference, or from the K maps a STAR reference lists (RELION's `--ref refs.star`). Each
iteration: τ²_k from the power of reference k → E-step marginalising over class, orientation and
translation (in the first iteration each particle sees one random class only: RELION's seed
generation, with one reference) → M-step (Wiener reconstruction of each class with T·τ²_k, σ²,
σ_offset, π_k, pdf_direction) → solvent flattening → new current resolution from data_vs_prior →
write `run_itNNN_*`. A fixed number of iterations at a fixed angular sampling.
"""

from __future__ import annotations

import json
import logging
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
    ReferencePowerTau2,
    first_per_group,
    initial_data_vs_prior,
    initial_sigma2,
    maximise,
    norm_corrections,
    reference_tau2,
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
    coarser_sampling,
    current_size,
    resolution_from_ssnr,
)
from ember.io.mrc import read_map
from ember.io.particles import ParticleDataSet, check_map_matches
from ember.io.star import read_reference_list
from ember.jobs.common import ParticleRun, config_dict, job_report, scale_groups, select_device, write_job_json
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
from ember.maths.symmetry import symmetry_operators
from ember.operators.filters import lowpass_ini_high
from ember.operators.projector import Projector
from ember.report.plots import plot_class_projections, plot_class_sizes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Class3DConfig:
    """Settings (RELION's Class3D defaults). Offsets in pixels; diameter and resolutions in Å;
    `sigma_ang_deg` turns on local searches around the input angles (degrees)."""

    star: Path
    reference: Path
    output: Path
    n_classes: int | None
    particle_diameter_angstrom: float
    symmetry: str = "C1"
    ini_high_angstrom: float = 60.0
    iterations: int = 25
    healpix_order: int = 2
    oversampling: int = 1
    offset_range_px: float = 5.0
    offset_step_px: float = 2.0
    tau2_fudge: float = 4.0
    sigma_offset_angstrom: float = 10.0
    fix_sigma_offset: bool = False
    input_offset_prior: bool = False
    sigma_ang_deg: float | None = None
    skip_align: bool = False
    allow_coarser_sampling: bool = False
    perturb: float = 0.5
    adaptive_fraction: float = 0.999
    maxsig: int | None = None
    gridding_iterations: int = 0
    norm: bool = False
    scale: bool = False
    ctf: bool = True
    batch_size: int = 64
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    continue_from: Path | None = None

    @property
    def star_reference(self) -> bool:
        """--ref is a STAR file listing one map per class (RELION's `--ref refs.star`)."""
        return Path(self.reference).suffix == ".star"

    def __post_init__(self) -> None:
        if self.gridding_iterations < 0:
            raise EmberInputError(None, "--gridding_iter must be ≥ 0", "")
        if self.n_classes is None and not self.star_reference:
            raise EmberInputError(None, "--K is needed with a single reference map", "add --K (number of classes)")
        if self.n_classes is not None and self.n_classes < 1:
            raise EmberInputError(None, f"--K must be ≥ 1 (got {self.n_classes})", "")
        if self.particle_diameter_angstrom <= 0:
            raise EmberInputError(None, "--particle_diameter must be > 0 Å", "")
        if self.iterations < 1:
            raise EmberInputError(None, f"--iter must be ≥ 1 (got {self.iterations})", "")
        if self.sigma_ang_deg is not None and self.sigma_ang_deg <= 0:
            raise EmberInputError(None, "--sigma_ang must be > 0 degrees", "")
        if self.sigma_offset_angstrom <= 0:
            raise EmberInputError(None, f"--offset must be > 0 Å (got {self.sigma_offset_angstrom})", "")
        if self.offset_step_px <= 0 or self.offset_range_px < 0:
            raise EmberInputError(None, "--offset_step must be > 0 and --offset_range ≥ 0 (pixels)", "")


@dataclass
class Run(ParticleRun):
    """What the loop carries between iterations; `history` (iterations, K) holds π_k per iteration;
    `norms` (n,) the per-particle norm corrections (rlnNormCorrection)."""

    cfg: Class3DConfig
    dataset: ParticleDataSet
    model: Model
    state: AutoRefineState
    results: ParticleResults
    symmetry: torch.Tensor
    directions: np.ndarray
    ave_pmax: float = 0.0
    history: list[list[float]] = field(default_factory=list)
    generate_seeds: bool = True
    norms: np.ndarray | None = None


def class3d(cfg: Class3DConfig, progress=None) -> Path:
    """Run the classification; returns the last iteration's model.star."""
    select_device(cfg.device, cfg.threads)
    run = resume(cfg) if cfg.continue_from else start(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    write_job_json(out, "class3d", cfg)
    while run.state.iteration < cfg.iterations:
        run.state.iteration += 1
        t0 = time.perf_counter()
        iterate(run, progress)
        logger.info("iteration %d: resolution %.2f Å, classes %s %%, <Pmax> %.3f, %.0f s", run.state.iteration,
                    resolution_angstrom(run.state.resolution_shell, run.box, run.pixel),
                    " ".join(f"{100 * p:.1f}" for p in run.model.class_prior), run.ave_pmax,
                    time.perf_counter() - t0)
    run.dataset.close()
    return out / f"run_it{run.state.iteration:03d}_model.star"


def start(cfg: Class3DConfig) -> Run:
    """All K classes start from the ini_high-filtered reference (ALGORITHM §7.1); or, with a STAR
    file as reference, class k from its k-th rlnReferenceImage, and no seed generation (RELION).
    `input_offset_prior`: the translation prior is centred on each particle's input offsets (they
    become its rlnOriginX/YPriorAngst)."""
    dataset = ParticleDataSet.from_star(cfg.star)
    if cfg.input_offset_prior:
        for axis in "XY":
            dataset.table.particles[f"rlnOrigin{axis}PriorAngst"] = dataset.column(f"rlnOrigin{axis}Angst", 0.0)
    box, pixel = dataset.box, dataset.pixel_size
    ini_shell = shell_of_resolution(cfg.ini_high_angstrom, box, pixel)
    references = [lowpass_ini_high(torch.from_numpy(ref).double(), cfg.ini_high_angstrom, pixel)
                  for ref in starting_maps(cfg, dataset)]
    symmetry = symmetry_operators(cfg.symmetry)
    directions = asymmetric_unit(cfg.healpix_order, symmetry)
    sigma2 = initial_sigma2(dataset, first_per_group(dataset), cfg.particle_diameter_angstrom / (2 * pixel))
    pdf = uniform_direction_pdf(cfg.healpix_order, directions)
    model = Model.initial(references, sigma2, cfg.sigma_offset_angstrom, pdf, scale_groups(dataset, cfg.scale))
    tau2 = torch.stack([reference_tau2(Projector.from_volume(r)) for r in references])
    model.ssnr = initial_data_vs_prior(tau2, sigma2, dataset.optics_group_counts(), model.class_prior, cfg.tau2_fudge)
    results = ParticleResults.empty(len(dataset), len(references))
    if all(c in dataset.table.particles for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        results.angles[:] = dataset.angles_deg()
    elif cfg.skip_align or cfg.sigma_ang_deg is not None:
        raise EmberInputError(cfg.star, "--skip_align and --sigma_ang need rlnAngleRot/Tilt/Psi",
                              "give particles with refined angles (e.g. refine3d's run_data.star)")
    results.offsets_px[:] = dataset.offsets_px()
    state = AutoRefineState(iteration=0, healpix_order=cfg.healpix_order, oversampling=cfg.oversampling,
                            offset_range_px=cfg.offset_range_px, offset_step_px=cfg.offset_step_px,
                            resolution_shell=ini_shell, best_resolution_shell=ini_shell,
                            sigma_ang_deg=cfg.sigma_ang_deg)
    return Run(cfg, dataset, model, state, results, symmetry, directions,
               generate_seeds=not cfg.star_reference,
               norms=dataset.column("rlnNormCorrection", 1.0).copy())


def starting_maps(cfg: Class3DConfig, dataset: ParticleDataSet) -> list[np.ndarray]:
    """K copies of the --ref map, or the maps a --ref STAR file lists (K from the file)."""
    if not cfg.star_reference:
        ref, ref_pixel = read_map(cfg.reference)
        check_map_matches(cfg.reference, ref.shape[0], ref_pixel, dataset)
        return [ref] * cfg.n_classes
    paths = read_reference_list(cfg.reference)
    if cfg.n_classes is not None and cfg.n_classes != len(paths):
        raise EmberInputError(cfg.reference, f"lists {len(paths)} references but --K is {cfg.n_classes}",
                              "drop --K (the file sets the number of classes) or list one map per class")
    maps = []
    for path in paths:
        ref, ref_pixel = read_map(path)
        check_map_matches(path, ref.shape[0], ref_pixel, dataset)
        maps.append(ref)
    return maps


def seed_classes(n: int, n_classes: int, seed: int) -> np.ndarray:
    """The one random class (0-based) each particle is aligned against in the first iteration."""
    return np.random.default_rng([seed, 7]).integers(n_classes, size=n)


def iterate(run: Run, progress=None) -> None:
    """One iteration: E-step over all particles, M-step, new resolution, write."""
    cfg, st, box, pixel = run.cfg, run.state, run.box, run.pixel
    rng = np.random.default_rng([cfg.seed, st.iteration])
    st.current_size = current_size(st, box, run.ave_pmax)
    fine_win = FrequencyWindow.build(box, st.current_size)
    if cfg.allow_coarser_sampling and run.model.n_classes > 1 and not cfg.skip_align:
        _coarser_sampling(run, fine_win, rng)
    w_c = coarse_size(st.healpix_order, cfg.particle_diameter_angstrom, box, pixel, st.current_size)
    coarse_win = FrequencyWindow.build(box, w_c if cfg.oversampling > 0 and not cfg.skip_align else st.current_size)
    model = run.model
    tau2 = torch.stack([reference_tau2(Projector.from_volume(r)) for r in model.references])
    model.rho = next_perturbation(model.rho, 0.0 if cfg.skip_align else cfg.perturb, rng)
    if cfg.skip_align:
        trans, oversampling = torch.zeros((1, 2), dtype=torch.float64), 0
    else:
        trans = torch.from_numpy(translation_grid(st.offset_range_px, st.offset_step_px))
        trans = trans + model.rho * st.offset_step_px
        oversampling = st.oversampling
    settings = EStepSettings(coarse_win, fine_win, trans, st.offset_step_px, oversampling, pixel,
                             cfg.adaptive_fraction, maxsig=cfg.maxsig, norm_residuals=cfg.norm,
                             scale_sums=cfg.scale and len(model.scale) > 1)
    sampling = SamplingState(st.healpix_order, st.oversampling, st.offset_range_px, st.offset_step_px,
                             run.directions, st.sigma_ang_deg)
    n, k_classes = len(run.dataset), model.n_classes
    sums = Sums.empty(box, k_classes, run.dataset.n_optics_groups, 12 * 4**st.healpix_order,
                      r_max=st.current_size // 2, n_scale_groups=len(model.scale))
    if progress is not None and hasattr(progress, "describe"):
        progress.describe(f"it {st.iteration}/{cfg.iterations} · "
                          f"{resolution_angstrom(st.resolution_shell, box, pixel):.1f} Å")
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(done, n)

    common = dict(prior_angles_deg=run.results.angles.copy(), prior_offsets_px=run.results.offsets_px.copy(),
                  offset_priors_px=run.offset_priors, image_scales=model.avg_norm / run.norms if cfg.norm else None,
                  symmetry=run.symmetry, mask_radius_px=run.mask_radius_px, batch_size=cfg.batch_size,
                  use_ctf=cfg.ctf, progress=tick, fixed_poses=cfg.skip_align, device=cfg.device)
    if st.iteration == 1 and k_classes > 1 and run.generate_seeds:
        assigned = seed_classes(n, k_classes, cfg.seed)
        run_expectation_assigned(run.dataset, np.arange(n), assigned, model, sampling, settings, sums, run.results,
                                 **common)
    else:
        run_expectation(run.dataset, np.arange(n), model, sampling, settings, sums, run.results, **common)
    run.ave_pmax = float(run.results.pmax.mean())
    if cfg.norm:
        run.norms = norm_corrections(run.norms, run.results.residual_power, model.avg_norm)
    run.model = _maximise(run, sums, tau2)
    if cfg.norm:
        run.model.avg_norm = float(run.norms.mean())
    st.resolution_shell = resolution_from_ssnr(run.model.ssnr, run.model.class_prior)
    st.best_resolution_shell = max(st.best_resolution_shell, st.resolution_shell)
    if not cfg.skip_align:
        st.acc_rot_deg, st.acc_trans_px = _accuracy(run, fine_win, rng)
    run.history.append(run.model.class_prior.tolist())
    write_outputs(run, f"run_it{st.iteration:03d}")


def _maximise(run: Run, sums: Sums, tau2: torch.Tensor) -> Model:
    """M-step with τ²_k from the references' power (T = --tau2_fudge) and, with --scale, each
    rlnGroupNumber's intensity scale; a class without particles gets a zero reference (RELION)."""
    new = maximise(run.model, sums, ReferencePowerTau2(tau2, run.cfg.tau2_fudge), symmetry=run.symmetry,
                   mask_radius_px=run.mask_radius_px, gridding_iterations=run.cfg.gridding_iterations,
                   fix_sigma_offset=run.cfg.fix_sigma_offset, update_scale=run.cfg.scale)
    for k in np.flatnonzero(new.class_prior <= 0):
        new.references[k] = torch.zeros_like(new.references[k])
    return new


def _coarser_sampling(run: Run, fine_win: FrequencyWindow, rng: np.random.Generator) -> None:
    """`--allow_coarser_sampling`: this iteration's HEALPix order and offset step as coarse as 80 %
    of the expected accuracy allows, never finer than the command line's (RELION, before each
    E-step); the first iteration estimates the accuracy from the starting reference."""
    st, cfg = run.state, run.cfg
    if st.iteration == 1:
        st.acc_rot_deg, st.acc_trans_px = _accuracy(run, fine_win, rng)
    order, st.offset_step_px = coarser_sampling(cfg.healpix_order, st.oversampling, cfg.offset_step_px,
                                                st.offset_range_px, st.acc_rot_deg, st.acc_trans_px)
    if order != st.healpix_order:
        st.healpix_order = order
        run.directions = asymmetric_unit(order, run.symmetry)
        pdf = uniform_direction_pdf(order, run.directions)
        run.model.pdf_direction = np.tile(pdf, (run.model.n_classes, 1))
    logger.info("coarser sampling: angular step %.2f°, offset step %.2f px (expected accuracy %.2f°, %.2f px)",
                angular_step_deg(order + st.oversampling), st.offset_step_px / 2**st.oversampling,
                st.acc_rot_deg, st.acc_trans_px)


def _accuracy(run: Run, fine_win: FrequencyWindow, rng: np.random.Generator) -> tuple[float, float]:
    """Expected angular (deg) and translational (px) accuracy on 100 particles of the largest class."""
    k = int(np.argmax(run.model.class_prior))
    members = np.flatnonzero(run.results.classes == k)
    if len(members) == 0:
        return 999.0, 999.0
    sample = rng.choice(members, size=min(100, len(members)), replace=False)
    projector = Projector.from_volume(run.model.references[k], r_max=fine_win.size // 2)
    return expected_accuracy(projector, run.model.sigma2_noise.mean(dim=0), run.dataset, sample,
                             run.results.angles[sample], fine_win, rng, run.cfg.ctf)


def write_outputs(run: Run, prefix: str) -> None:
    """run_itNNN_classNNN.mrc, run_itNNN_data.star, run_itNNN_model.star, run_itNNN_state.json,
    class_sizes.png and classes.png (RELION's Class3D layout)."""
    out, box, pixel, st, model = Path(run.cfg.output), run.box, run.pixel, run.state, run.model
    groups = run.dataset.group_numbers()
    names = [f"class{k + 1:03d}" for k in range(model.n_classes)]
    data = data_table(run.dataset.table, run.results, None, pixel, run.dataset.image_names_relative_to(out),
                      groups, run.norms)
    blocks = model_blocks(model, st, box=box, pixel=pixel, map_names=[f"{prefix}_{n}.mrc" for n in names],
                          ave_pmax=run.ave_pmax, loglik=float(run.results.loglik.sum()), acc_rot=st.acc_rot_deg,
                          acc_trans_angstrom=st.acc_trans_px * pixel, tau2_fudge=run.cfg.tau2_fudge,
                          group_counts=np.bincount(groups - 1))
    state = {"config": config_dict(run.cfg),
             "state": st.to_dict(), "ave_pmax": run.ave_pmax, "history": run.history,
             "models": [model_to_json(model)]}
    write_iteration(out, prefix, maps=dict(zip(names, model.references, strict=True)), pixel=pixel, data=data,
                    models={"": blocks}, state=state)
    plot_class_sizes(out / "class_sizes.png", np.array(run.history))
    labels = [f"class {k + 1} ({100 * p:.0f} %)" for k, p in enumerate(model.class_prior)]
    plot_class_projections(out / "classes.png", [r.float().numpy() for r in model.references], labels)
    report = job_report("class3d", f"class3d: iteration {st.iteration} ({out.name})", run.cfg)
    add_iteration_numbers(report, st, n_particles=len(run.dataset), ave_pmax=run.ave_pmax,
                          sigma_offset_angstrom=model.sigma_offset_angstrom, pixel=pixel,
                          angular_step_deg=None if run.cfg.skip_align else angular_step_deg(st.healpix_order
                                                                                             + st.oversampling))
    add_class_numbers(report, model, np.bincount(run.results.classes, minlength=model.n_classes), box=box, pixel=pixel)
    report.figure("Class sizes π_k per iteration.", out / "class_sizes.png")
    report.figure("Projections of each class map.", out / "classes.png")
    add_model_figures(report, model, box=box, pixel=pixel, labels=[f"class {k + 1}" for k in range(model.n_classes)])
    report.write(out / "report.html")


def resume(cfg: Class3DConfig) -> Run:
    """Rebuild the loop from a `run_itNNN_state.json` with its class maps and data.star."""
    path = Path(cfg.continue_from)
    if not path.exists():
        raise EmberInputError(path, "file not found", "give a run_itNNN_state.json written by class3d")
    saved = json.loads(path.read_text())
    if "history" not in saved:
        raise EmberInputError(path, "not a class3d state file", "give a run_itNNN_state.json written by class3d")
    prefix = path.name.removesuffix("_state.json")
    dataset = ParticleDataSet.from_star(path.parent / f"{prefix}_data.star")
    n_classes = len(saved["models"][0]["class_prior"])
    refs = [torch.from_numpy(read_map(path.parent / f"{prefix}_class{k + 1:03d}.mrc")[0]).double()
            for k in range(n_classes)]
    model = model_from_json(saved["models"][0], refs)
    state = AutoRefineState(**saved["state"])
    results = ParticleResults.empty(len(dataset), n_classes)
    results.angles[:] = dataset.angles_deg()
    results.offsets_px[:] = dataset.offsets_px()
    results.classes[:] = dataset.column("rlnClassNumber", 1).astype(int) - 1
    results.pmax[:] = dataset.column("rlnMaxValueProbDistribution", 0.0)
    symmetry = symmetry_operators(cfg.symmetry)
    return Run(cfg, dataset, model, state, results, symmetry, asymmetric_unit(state.healpix_order, symmetry),
               saved["ave_pmax"], saved["history"], norms=dataset.column("rlnNormCorrection", 1.0).copy())
