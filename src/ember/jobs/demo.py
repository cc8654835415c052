"""`ember demo`: the method end to end on the bundled 1AKE structure — simulate particles in
unknown orientations → initial model without a reference → gold-standard refine3d →
mask and post-processing → the resolution against the ground truth (after aligning the map,
whose hand the data cannot fix)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch

from ember.io.mrc import read_map
from ember.jobs.align_maps import align_maps
from ember.jobs.common import Progress, job_report
from ember.jobs.initial_model import InitialModelConfig, initial_model
from ember.jobs.mask import MaskConfig, mask_job
from ember.jobs.postprocess import PostprocessConfig, postprocess
from ember.jobs.refine3d import Refine3DConfig, refine3d
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.fsc import fsc
from ember.report.plots import figure_central_sections, plot_fsc

logger = logging.getLogger(__name__)

AKE_MW_KDA = 23.6  # adenylate kinase, one chain of 1AKE


def demo_structure() -> Path:
    """Path of the bundled 1AKE mmCIF."""
    return Path(str(files("ember") / "data" / "1ake.cif"))


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (box in px, pixel in Å, diameter in Å); `quick` shrinks it for tests."""

    output: Path = Path("ember_demo")
    n_particles: int = 500
    box: int = 32
    pixel_size: float = 2.5
    snr: float = 0.5
    particle_diameter_angstrom: float = 70.0
    initial_iterations: int = 60
    refine_iterations: int = 50
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def quick(cls, output: Path, seed: int = 0) -> DemoConfig:
        return cls(output=output, n_particles=300, snr=1.0, initial_iterations=30, refine_iterations=3, seed=seed)


@dataclass(frozen=True)
class DemoResult:
    """Final (post-processed, FSC 0.143 of the halves) resolution and B-factor, resolution of the
    map against the truth (FSC 0.5 after alignment), whether the map came out mirrored, paths."""

    final_resolution: float
    bfactor: float
    resolution_vs_truth: float
    flipped: bool
    pixel_size: float
    final_map: Path
    fsc_plot: Path
    report: Path


def demo(cfg: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """Run the pipeline; every job writes its own folder under cfg.output."""
    out = Path(cfg.output)
    star = simulate(SimulateConfig(output=out / "simulate", n_particles=cfg.n_particles, model_path=demo_structure(),
                                   box=cfg.box, pixel_size=cfg.pixel_size, snr=cfg.snr, defocus_min_um=1.0,
                                   defocus_max_um=2.5, seed=cfg.seed), progress)
    logger.info("initial model from %d particles, no reference", cfg.n_particles)
    # HEALPix order 1 throughout: auto-sampling (orders 2–3) took the demo's initial model from 5.33 to
    # 5.00 Å vs truth but from 52 to 379 s, and the refinement that follows reaches Nyquist from either
    start = initial_model(InitialModelConfig(star=star, output=out / "initial_model",
                                             particle_diameter_angstrom=cfg.particle_diameter_angstrom,
                                             iterations=cfg.initial_iterations, auto_sampling=False, seed=cfg.seed,
                                             device=cfg.device),
                          progress)
    logger.info("gold-standard refinement from the initial model")
    refined = refine3d(Refine3DConfig(star=star, reference=start, output=out / "refine3d",
                                      particle_diameter_angstrom=cfg.particle_diameter_angstrom, ini_high_angstrom=30.0,
                                      max_iterations=cfg.refine_iterations, seed=cfg.seed, device=cfg.device), progress)
    halves = [out / "refine3d" / f"run_half{h}_class001_unfil.mrc" for h in (1, 2)]
    mask = mask_job(MaskConfig(input=refined, output=out / "mask.mrc", mw_kda=AKE_MW_KDA, extend_inimask=3,
                               width_soft_edge=6, lowpass=15.0)).output
    post = postprocess(PostprocessConfig(half1=halves[0], half2=halves[1], mask=mask, output=out / "postprocess",
                                         seed=cfg.seed))
    truth, pixel = read_map(out / "simulate" / "truth.mrc")
    final_map = out / "postprocess" / "postprocess.mrc"
    aligned = align_maps(truth, read_map(refined)[0], pixel)
    curve = fsc(torch.from_numpy(aligned.aligned).double(), torch.from_numpy(truth).double())
    plot = out / "fsc_vs_truth.png"
    plot_fsc(plot, {"refined map vs ground truth (aligned)": curve.numpy(),
                    "half maps (corrected, masked)": post.fsc_true}, box=truth.shape[0], pixel_size=pixel,
             title="ember demo: 1AKE from images in unknown orientations")
    report = job_report("demo", "ember demo: adenylate kinase (1AKE) from images in unknown orientations", cfg)
    report.number("final resolution (half maps, FSC 0.143, masked)", f"{post.final_resolution:.2f} Å")
    report.number("resolution against the ground truth (FSC 0.5, after alignment)",
                  f"{aligned.fsc05_angstrom:.2f} Å" + (" (the map came out mirrored)" if aligned.flipped else ""))
    report.number("B-factor used for sharpening", f"{post.bfactor:.1f} Å²")
    report.number("particles", f"{cfg.n_particles} at SNR {cfg.snr}, box {cfg.box} px, {pixel} Å/px")
    for label, folder in (("simulate", "simulate"), ("initial-model", "initial_model"), ("refine3d", "refine3d"),
                          ("postprocess", "postprocess")):
        report.link(f"{label}: report", f"{folder}/report.html")
    report.figure("The refined map against the ground truth (after alignment) and the half maps' corrected FSC.", plot)
    report.figure("Central sections of the ground truth and of the refined map (aligned onto the truth).",
                  figure_central_sections([truth, aligned.aligned], ["ground truth", "refined (aligned)"]))
    return DemoResult(post.final_resolution, post.bfactor, aligned.fsc05_angstrom, aligned.flipped, pixel, final_map,
                      plot, report.write(out / "report.html"))
