"""`ember refine3d`: gold-standard 3D auto-refinement (RELION `--auto_refine --split_random_halves`).

The loop, per iteration: E-step of each half against its own reference → (join halves below
40 Å) → FSC of the halves → M-step (τ² from the FSC, Wiener reconstruction, σ², σ_offset) →
solvent flattening → new resolution, windows and sampling → write. After convergence one final
iteration at the full window joins the halves into `run_class001.mrc`.
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
from ember.inference.engine import angular_changes, run_expectation
from ember.inference.estep import CrossCorrelation, EStepSettings, Marginalisation
from ember.inference.images import FrequencyWindow
from ember.inference.model import Model, ParticleResults, SamplingState, Sums
from ember.inference.mstep import (
    GoldStandardTau2,
    first_per_group,
    initial_data_vs_prior,
    initial_sigma2,
    maximise,
    norm_corrections,
    reference_tau2,
    unregularised_fsc,
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
    check_convergence,
    coarse_size,
    current_size,
    update_hidden_changes,
    update_resolution,
    update_sampling,
)
from ember.io.mrc import read_map
from ember.io.particles import ParticleDataSet, check_map_matches
from ember.jobs.common import (
    ParticleRun,
    config_dict,
    in_reference_px,
    job_report,
    scale_groups,
    select_device,
    write_job_json,
)
from ember.jobs.refine_io import (
    add_iteration_numbers,
    add_model_figures,
    data_table,
    model_blocks,
    model_from_json,
    model_to_json,
    write_iteration,
)
from ember.maths.fourier import resolution_angstrom, shell_of_resolution
from ember.maths.fsc import resolution_shell
from ember.maths.symmetry import symmetry_operators
from ember.operators.filters import lowpass_ini_high
from ember.operators.projector import Projector
from ember.operators.reconstructor import Reconstructor, join_low_resolution
from ember.parallel import Ranks
from ember.report.html import Report
from ember.report.plots import figure_resolution_history, plot_angular_distribution, plot_fsc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refine3DConfig:
    """Settings (RELION defaults). Offsets in pixels of the particle box; diameter, resolutions in Å."""

    star: Path
    reference: Path
    output: Path
    particle_diameter_angstrom: float
    symmetry: str = "C1"
    ini_high_angstrom: float = 60.0
    healpix_order: int = 2
    oversampling: int = 1
    offset_range_px: float = 5.0
    offset_step_px: float = 2.0
    auto_local_healpix_order: int = 4
    low_resol_join_halves_angstrom: float = 40.0
    tau2_fudge: float = 1.0
    sigma_offset_angstrom: float = 10.0
    fix_sigma_offset: bool = False
    perturb: float = 0.5
    adaptive_fraction: float = 0.999
    max_iterations: int = 50
    maxsig: int | None = None
    gridding_iterations: int = 0
    sigma_ang_deg: float | None = None
    maxcc: bool = False
    norm: bool = False
    scale: bool = False
    no_halves: bool = False
    ctf: bool = True
    batch_size: int = 64
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    continue_from: Path | None = None

    def __post_init__(self) -> None:
        if self.gridding_iterations < 0:
            raise EmberInputError(None, "--gridding_iter must be ≥ 0", "")
        if self.particle_diameter_angstrom <= 0:
            raise EmberInputError(None, "--particle_diameter must be > 0 Å", "")
        if self.sigma_ang_deg is not None and self.sigma_ang_deg <= 0:
            raise EmberInputError(None, "--sigma_ang must be > 0 degrees", "")
        if self.sigma_offset_angstrom <= 0:
            raise EmberInputError(None, f"--offset must be > 0 Å (got {self.sigma_offset_angstrom})", "")
        if self.offset_step_px <= 0 or self.offset_range_px < 0:
            raise EmberInputError(None, "--offset_step must be > 0 and --offset_range ≥ 0 (pixels)", "")


@dataclass
class Run(ParticleRun):
    """What the loop carries between iterations."""

    cfg: Refine3DConfig
    dataset: ParticleDataSet
    subsets: np.ndarray
    models: list[Model]
    state: AutoRefineState
    results: ParticleResults
    symmetry: torch.Tensor
    directions: np.ndarray
    ave_pmax: float = 0.0
    norms: np.ndarray | None = None  # (n,) per-particle norm corrections (rlnNormCorrection)
    ranks: Ranks = field(default_factory=Ranks)  # processes sharing the particles (torchrun)
    resolutions: list[float] = field(default_factory=list)  # Å, current resolution after each iteration

    @property
    def angle_priors(self) -> np.ndarray:
        """(n, 3) centres of local searches: the STAR's prior columns where set, else the current angles."""
        given = self.dataset.prior_angles_deg()
        current = self.results.angles
        return current.copy() if given is None else np.where(np.isnan(given), current, given)


def refine3d(cfg: Refine3DConfig, progress=None) -> Path:
    """Run auto-refinement; returns the path of the final map."""
    ranks = Ranks.from_environment(select_device(cfg.device, cfg.threads))
    try:
        run = resume(cfg) if cfg.continue_from else start(cfg)
        run.ranks = ranks
        _loop(run, progress)
    finally:
        ranks.close()
    return Path(cfg.output) / "run_class001.mrc"


def _loop(run: Run, progress) -> None:
    """Iterate until convergence, then the final iteration."""
    cfg, out = run.cfg, Path(run.cfg.output)
    if run.ranks.is_root:
        out.mkdir(parents=True, exist_ok=True)
        write_job_json(out, "refine3d", cfg)
    while True:
        run.state.iteration += 1
        t0 = time.perf_counter()
        final = run.state.final
        iterate(run, progress)
        logger.info(
            "iteration %d: resolution %.2f Å, window %d, angular step %.2f°%s, offsets %.1f/%.2f px, "
            "<Pmax> %.3f, %.0f s", run.state.iteration,
            resolution_angstrom(run.state.resolution_shell, run.box, run.pixel), run.state.current_size,
            angular_step_deg(run.state.healpix_order + run.state.oversampling),
            " (local)" if run.state.sigma_ang_deg else "", run.state.offset_range_px, run.state.offset_step_px,
            run.ave_pmax, time.perf_counter() - t0,
        )
        if final:
            break
        if run.state.converged or run.state.iteration >= cfg.max_iterations:
            run.state.final = True
    run.dataset.close()


def start(cfg: Refine3DConfig) -> Run:
    dataset = ParticleDataSet.from_star(cfg.star, mixed_sizes=True)
    ref, ref_pixel = read_map(cfg.reference)
    check_map_matches(cfg.reference, ref.shape[0], ref_pixel, dataset)
    n, box, pixel = len(dataset), dataset.box, dataset.pixel_size
    subsets = split_halves(dataset, cfg.seed)
    ini_shell = shell_of_resolution(cfg.ini_high_angstrom, box, pixel)
    reference = lowpass_ini_high(torch.from_numpy(ref), cfg.ini_high_angstrom, pixel)
    symmetry = symmetry_operators(cfg.symmetry)
    directions = asymmetric_unit(cfg.healpix_order, symmetry)
    sigma2 = initial_sigma2(dataset, first_per_group(dataset), cfg.particle_diameter_angstrom / (2 * pixel))
    pdf = uniform_direction_pdf(cfg.healpix_order, directions)
    n_scale = scale_groups(dataset, cfg.scale)
    models = [Model.initial([reference], sigma2, cfg.sigma_offset_angstrom, pdf, n_scale) for _ in range(2)]
    ssnr = initial_data_vs_prior(reference_tau2(Projector.from_volume(reference))[None], sigma2,
                                 dataset.optics_group_counts(), models[0].class_prior, cfg.tau2_fudge)
    for model in models:
        model.ssnr = ssnr.clone()
    results = ParticleResults.empty(n)
    if all(c in dataset.table.particles for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        results.angles[:] = dataset.angles_deg()
    results.offsets_px[:] = in_reference_px(dataset, dataset.offsets_px())
    state = AutoRefineState(iteration=0, healpix_order=cfg.healpix_order, oversampling=cfg.oversampling,
                            offset_range_px=cfg.offset_range_px, offset_step_px=cfg.offset_step_px,
                            resolution_shell=ini_shell, best_resolution_shell=ini_shell,
                            sigma_ang_deg=cfg.sigma_ang_deg)
    return Run(cfg, dataset, subsets, models, state, results, symmetry, directions,
               norms=dataset.column("rlnNormCorrection", 1.0).copy())


def split_halves(dataset: ParticleDataSet, seed: int) -> np.ndarray:
    """rlnRandomSubset from the STAR when every particle has 1 or 2, else a seeded random split."""
    given = dataset.column("rlnRandomSubset", 0).astype(int)
    if np.isin(given, (1, 2)).all():
        return given
    if (given != 0).any():
        raise EmberInputError(dataset.star_path, "rlnRandomSubset is set for some particles only",
                              "set it for all particles or remove the column")
    order = np.random.default_rng(seed).permutation(len(given))
    subsets = np.ones(len(given), dtype=int)
    subsets[order[len(given) // 2 + len(given) % 2 :]] = 2
    return subsets


def iterate(run: Run, progress=None) -> None:
    cfg, st = run.cfg, run.state
    box, pixel = run.box, run.pixel
    rng = np.random.default_rng([cfg.seed, st.iteration])
    st.current_size = current_size(st, box, run.ave_pmax)
    w_c = coarse_size(st.healpix_order, cfg.particle_diameter_angstrom, box, pixel, st.current_size)
    fine_win = FrequencyWindow.build(box, st.current_size)
    coarse_win = FrequencyWindow.build(box, w_c if cfg.oversampling > 0 else st.current_size)
    sampling = SamplingState(st.healpix_order, st.oversampling, st.offset_range_px, st.offset_step_px,
                             run.directions, st.sigma_ang_deg)
    old_angles, old_offsets = run.results.angles.copy(), run.results.offsets_px.copy()
    angle_priors, offset_priors = run.angle_priors, run.offset_priors
    if progress is not None and hasattr(progress, "describe"):
        res = resolution_angstrom(st.resolution_shell, box, pixel)
        step = angular_step_deg(st.healpix_order + st.oversampling)
        progress.describe(f"it {st.iteration}{' final' if st.final else ''} · {res:.1f} Å · {step:.2f}°")
    n_dirs = 12 * 4**st.healpix_order
    groups = run.dataset.n_optics_groups
    n_scale = len(run.models[0].scale)
    n_shells = max(b for b, _ in run.group_sizes) // 2 + 1
    sums = [Sums.empty(box, 1, groups, n_dirs, r_max=st.current_size // 2, n_scale_groups=n_scale, n_shells=n_shells)
            for _ in range(2)]
    weighting = CrossCorrelation() if cfg.maxcc else Marginalisation()
    done = 0
    mine = []
    for h in (0, 1):
        model = run.models[0 if cfg.no_halves else h]
        rho = next_perturbation(model.rho, cfg.perturb, rng)
        model.rho = rho
        trans = torch.from_numpy(translation_grid(st.offset_range_px, st.offset_step_px)) + rho * st.offset_step_px
        settings = EStepSettings(coarse_win, fine_win, trans, st.offset_step_px, st.oversampling, pixel,
                                 cfg.adaptive_fraction, weighting, cfg.maxsig, norm_residuals=cfg.norm,
                                 scale_sums=cfg.scale and n_scale > 1)
        indices = run.ranks.share(np.flatnonzero(run.subsets == h + 1))
        mine.append(indices)

        def tick(k: int) -> None:
            nonlocal done
            done += k
            if progress:
                progress(min(done * run.ranks.size, len(run.subsets)), len(run.subsets))

        run_expectation(run.dataset, indices, model, sampling, settings, sums[h], run.results,
                        prior_angles_deg=angle_priors, prior_offsets_px=old_offsets,
                        offset_priors_px=offset_priors, image_scales=model.avg_norm / run.norms,
                        symmetry=run.symmetry,
                        mask_radius_px=run.mask_radius_px, batch_size=cfg.batch_size, use_ctf=cfg.ctf,
                        progress=tick, device=run.ranks.device)
    for s in sums:
        s.all_reduce(run.ranks)
    run.results.all_reduce(run.ranks, np.concatenate(mine))
    run.ave_pmax = float(run.results.pmax.mean())
    if cfg.norm:
        _update_norms(run)
    if st.final:
        finish(run, sums)
        return
    recs = [s.reconstructors[0] for s in sums]
    for r in recs:
        r.prepare(run.symmetry)
    if not cfg.no_halves:
        join = shell_of_resolution(max(cfg.low_resol_join_halves_angstrom,
                                       resolution_angstrom(st.resolution_shell, box, pixel)), box, pixel)
        join_low_resolution(recs[0], recs[1], join)
    half_fsc = unregularised_fsc(recs[0], recs[1])
    tau2 = GoldStandardTau2(half_fsc, cfg.tau2_fudge)
    common = dict(symmetry=run.symmetry, mask_radius_px=run.mask_radius_px, fsc=half_fsc,
                  update_noise=weighting.updates_noise, update_scale=cfg.scale and not cfg.maxcc,
                  group_boxes=[b for b, _ in run.group_sizes], gridding_iterations=cfg.gridding_iterations,
                  fix_sigma_offset=cfg.fix_sigma_offset)
    if cfg.no_halves:
        m = maximise(run.models[0], _joined(sums, box, st.current_size // 2), tau2, **common)
        run.models = [m, m]
    else:
        run.models = [maximise(run.models[h], sums[h], tau2, **common) for h in (0, 1)]
    if cfg.norm:
        for h in (0, 1):
            run.models[h].avg_norm = float(run.norms[run.subsets == h + 1].mean()) if not cfg.no_halves \
                else float(run.norms.mean())
    update_resolution(st, half_fsc, cfg.tau2_fudge)
    run.resolutions.append(resolution_angstrom(st.resolution_shell, box, pixel))
    _update_sampling(run, old_angles, old_offsets, fine_win, rng)
    check_convergence(st)
    if run.ranks.is_root:
        write_outputs(run, f"run_it{st.iteration:03d}")


def _update_norms(run: Run) -> None:
    """Per-particle norm corrections from this E-step's residuals, each half with its model's average."""
    for h in (0, 1):
        rows = np.flatnonzero(run.subsets == h + 1) if not run.cfg.no_halves else np.arange(len(run.norms))
        model = run.models[0 if run.cfg.no_halves else h]
        run.norms[rows] = norm_corrections(run.norms[rows], run.results.residual_power[rows], model.avg_norm)
        if run.cfg.no_halves:
            break


def _joined(sums, box: int, r_max: int | None = None, *, prepared: bool = True):
    """Sums of both halves: prepared reconstructors are added as data/weight, unprepared ones
    as raw accumulators (the final iteration joins before symmetrising)."""
    rec = Reconstructor(box, r_max=r_max)
    if prepared:
        rec.add_prepared(sums[0].reconstructors[0], sums[1].reconstructors[0])
    else:
        for s in sums:
            rec.add(s.reconstructors[0])
    joint = sums[0] + sums[1]
    joint.reconstructors = [rec]
    return joint


def _update_sampling(run: Run, old_angles, old_offsets, fine_win, rng) -> None:
    st, cfg = run.state, run.cfg
    changes = angular_changes(old_angles, run.results.angles, run.symmetry)
    offset_change = np.sqrt(((run.results.offsets_px - old_offsets) ** 2).sum(1).mean() / 2)
    update_hidden_changes(st, float(changes.mean()), float(offset_change))
    if not cfg.maxcc:
        model = run.models[0]
        candidates, sigma2 = np.arange(len(run.subsets)), model.sigma2_noise
        if not run.dataset.uniform_sizes:  # the accuracy is estimated on images of the reference's size
            ref_groups = [g for g, (b, a) in enumerate(run.group_sizes) if b == run.box and abs(a - run.pixel) < 1e-6]
            candidates = np.flatnonzero(np.isin(run.dataset.optics_group_index(), ref_groups))
            sigma2 = sigma2[ref_groups]
        sample = rng.choice(candidates, size=min(100, len(candidates)), replace=False)
        projector = Projector.from_volume(model.references[0], r_max=fine_win.size // 2)
        st.acc_rot_deg, st.acc_trans_px = expected_accuracy(
            projector, sigma2.mean(dim=0)[: run.box // 2 + 1], run.dataset, sample, run.results.angles[sample],
            fine_win, rng, cfg.ctf)
    if update_sampling(st, float(offset_change), cfg.auto_local_healpix_order, pixel_angstrom=run.pixel):
        run.directions = asymmetric_unit(st.healpix_order, run.symmetry)
        for m in run.models:
            m.pdf_direction = uniform_direction_pdf(st.healpix_order, run.directions)[None]


def finish(run: Run, sums) -> None:
    """Final iteration: FSC of the halves at full window, then one map of all particles."""
    cfg, box = run.cfg, run.box
    joint = _joined(sums, box, prepared=False)
    recs = [s.reconstructors[0] for s in sums]
    for r in recs:
        r.prepare(run.symmetry)
    half_fsc = unregularised_fsc(recs[0], recs[1])
    unfil = [r.reconstruct(gridding_iterations=cfg.gridding_iterations).double() for r in recs]
    final = maximise(run.models[0], joint, GoldStandardTau2(half_fsc, cfg.tau2_fudge, joined=True),
                     symmetry=run.symmetry, mask_radius_px=None, fsc=half_fsc, update_noise=not cfg.maxcc,
                     group_boxes=[b for b, _ in run.group_sizes], gridding_iterations=cfg.gridding_iterations)
    run.state.resolution_shell = resolution_shell(half_fsc, 0.143)
    run.resolutions.append(resolution_angstrom(run.state.resolution_shell, box, run.pixel))
    run.models = [final, final]
    if run.ranks.is_root:
        write_outputs(run, "run", final_maps={"class001": final.references[0], "half1_class001_unfil": unfil[0],
                                              "half2_class001_unfil": unfil[1]})


def write_outputs(run: Run, prefix: str, final_maps: dict | None = None) -> None:
    out, box, pixel, st = Path(run.cfg.output), run.box, run.pixel, run.state
    groups = run.dataset.group_numbers()
    data = data_table(run.dataset.table, run.results, run.subsets, pixel, run.dataset.image_names_relative_to(out),
                      groups, run.norms)
    acc = (st.acc_rot_deg, st.acc_trans_px * pixel)
    common = dict(box=box, pixel=pixel, ave_pmax=run.ave_pmax, loglik=float(run.results.loglik.sum()),
                  acc_rot=acc[0], acc_trans_angstrom=acc[1], tau2_fudge=run.cfg.tau2_fudge,
                  group_counts=np.bincount(groups - 1), group_sizes=run.group_sizes)
    if final_maps is None:
        maps = {f"half{h + 1}_class001": run.models[h].references[0] for h in (0, 1)}
        models = {f"half{h + 1}_": model_blocks(run.models[h], st, map_names=[f"{prefix}_half{h + 1}_class001.mrc"],
                                                **common) for h in (0, 1)}
    else:
        maps = final_maps
        models = {"": model_blocks(run.models[0], st, map_names=["run_class001.mrc"], **common)}
    state = {"config": config_dict(run.cfg),
             "state": st.to_dict(), "ave_pmax": run.ave_pmax, "subsets": run.subsets.tolist(),
             "resolutions": run.resolutions,
             "models": [model_to_json(m) for m in run.models]}
    write_iteration(out, prefix, maps=maps, pixel=pixel, data=data, models=models, state=state)
    curves = {"gold-standard FSC (halves)": run.models[0].fsc[0].numpy()}
    plot_fsc(out / "fsc.png", curves, box=box, pixel_size=pixel, title=f"{prefix}: half-map FSC")
    plot_angular_distribution(out / "angular_distribution.png", run.results.angles)
    _report(run, prefix, final=final_maps is not None).write(out / "report.html")


def _report(run: Run, prefix: str, final: bool) -> Report:
    """report.html: resolution, sampling, FSC, resolution per iteration, angular distribution,
    central sections and the σ²/τ² spectra."""
    out, st, model = Path(run.cfg.output), run.state, run.models[0]
    report = job_report("refine3d", f"refine3d: {'final map' if final else f'iteration {st.iteration}'} "
                                    f"({out.name})", run.cfg)
    res = resolution_angstrom(st.resolution_shell, run.box, run.pixel)
    report.number("final resolution (half-map FSC 0.143)" if final else "current resolution", f"{res:.2f} Å")
    report.number("maps", f"{prefix}_class001.mrc" if final else f"{prefix}_half1/2_class001.mrc")
    add_iteration_numbers(report, st, n_particles=len(run.dataset), ave_pmax=run.ave_pmax,
                          sigma_offset_angstrom=model.sigma_offset_angstrom, pixel=run.pixel,
                          angular_step_deg=angular_step_deg(st.healpix_order + st.oversampling))
    report.number("expected accuracy", f"{st.acc_rot_deg:.2f}° rotation, {st.acc_trans_px * run.pixel:.2f} Å "
                                       "translation")
    report.figure("Gold-standard FSC between the two independently refined half maps.", out / "fsc.png")
    if run.resolutions:
        report.figure("Current resolution after each iteration.", figure_resolution_history(np.array(run.resolutions)))
    report.figure("Viewing directions of the particles (equal-area map).", out / "angular_distribution.png")
    label = "final map" if final else "half 1"
    add_model_figures(report, model, box=run.box, pixel=run.pixel, labels=[label], group_sizes=run.group_sizes)
    return report


def resume(cfg: Refine3DConfig) -> Run:
    """Rebuild the loop state from a `run_itNNN_state.json` (and its maps and data.star)."""
    path = Path(cfg.continue_from)
    if not path.exists():
        raise EmberInputError(path, "file not found", "give a run_itNNN_state.json written by refine3d")
    saved = json.loads(path.read_text())
    prefix = path.name.removesuffix("_state.json")
    dataset = ParticleDataSet.from_star(path.parent / f"{prefix}_data.star", mixed_sizes=True)
    refs = [torch.from_numpy(read_map(path.parent / f"{prefix}_half{h}_class001.mrc")[0]).double() for h in (1, 2)]
    models = [model_from_json(d, [r]) for d, r in zip(saved["models"], refs, strict=True)]
    state = AutoRefineState(**saved["state"])
    results = ParticleResults.empty(len(dataset))
    results.angles[:] = dataset.angles_deg()
    results.offsets_px[:] = in_reference_px(dataset, dataset.offsets_px())
    results.pmax[:] = dataset.column("rlnMaxValueProbDistribution", 0.0)
    symmetry = symmetry_operators(cfg.symmetry)
    run = Run(cfg, dataset, np.array(saved["subsets"]), models, state, results, symmetry,
              asymmetric_unit(state.healpix_order, symmetry), saved["ave_pmax"],
              norms=dataset.column("rlnNormCorrection", 1.0).copy(), resolutions=saved.get("resolutions", []))
    return run
