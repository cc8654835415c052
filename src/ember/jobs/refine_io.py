"""RELION-layout outputs of refinement jobs: maps, data.star, model.star, state for --continue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ember.inference.model import Model, ParticleResults
from ember.inference.schedule import AutoRefineState
from ember.io.atomic import atomic_path
from ember.io.mrc import write_map
from ember.io.star import ParticleTable, write_particles_star, write_star_blocks
from ember.maths.fourier import resolution_angstrom
from ember.report.html import Report
from ember.report.plots import figure_central_sections, figure_spectra


def data_table(base: ParticleTable, results: ParticleResults, subsets: np.ndarray | None, pixel: float,
               image_names: list[str], group_numbers: np.ndarray, norms: np.ndarray) -> ParticleTable:
    """Input columns plus the refined pose and per-particle statistics (RELION labels).

    Stale pixel-offset columns (rlnOriginX/Y, RELION 3.0) are dropped: the Å columns replace them."""
    t = base.copy()
    p = t.particles.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in t.particles])
    p["rlnImageName"] = image_names
    p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"] = results.angles.T
    p["rlnOriginXAngst"], p["rlnOriginYAngst"] = (results.offsets_px * pixel).T
    p["rlnClassNumber"] = results.classes + 1
    p["rlnGroupNumber"] = group_numbers
    p["rlnNormCorrection"] = norms
    p["rlnLogLikeliContribution"] = results.loglik
    p["rlnMaxValueProbDistribution"] = results.pmax
    p["rlnNrOfSignificantSamples"] = results.n_significant
    if subsets is not None:
        p["rlnRandomSubset"] = subsets
    t.particles = p
    return t


def model_blocks(model: Model, state: AutoRefineState, *, box: int, pixel: float, map_names: list[str],
                 ave_pmax: float, loglik: float, acc_rot: float, acc_trans_angstrom: float, tau2_fudge: float,
                 group_counts: np.ndarray, ref_dim: int = 3, group_sizes: list[tuple[int, float]] | None = None
                 ) -> dict:
    """The blocks of a RELION model.star: model_general, model_classes, model_class_k,
    model_optics_group_g, model_groups, model_pdf_orient_class_k (ALGORITHM §10.4); each optics
    group's σ² over its own image shells (`group_sizes`: (box px, pixel Å) per group, default the
    reference's)."""
    shells = np.arange(box // 2 + 1)
    res = resolution_angstrom(state.resolution_shell, box, pixel)
    n_classes, n_groups = model.n_classes, model.sigma2_noise.shape[0]
    general = {
        "rlnReferenceDimensionality": ref_dim, "rlnDataDimensionality": 2, "rlnOriginalImageSize": box,
        "rlnCurrentResolution": res, "rlnCurrentImageSize": state.current_size, "rlnPaddingFactor": model.pad,
        "rlnIsHelix": 0, "rlnFourierSpaceInterpolator": 1, "rlnMinRadiusNnInterpolation": 10,
        "rlnPixelSize": pixel, "rlnNrClasses": n_classes, "rlnNrBodies": 1, "rlnNrGroups": len(group_counts),
        "rlnNrOpticsGroups": n_groups, "rlnTau2FudgeFactor": tau2_fudge, "rlnNormCorrectionAverage": model.avg_norm,
        "rlnSigmaOffsetsAngst": model.sigma_offset_angstrom,
        "rlnOrientationalPriorMode": 0 if state.sigma_ang_deg is None else 1,
        "rlnSigmaPriorRotAngle": state.sigma_ang_deg or 0.0, "rlnSigmaPriorTiltAngle": state.sigma_ang_deg or 0.0,
        "rlnSigmaPriorPsiAngle": state.sigma_ang_deg or 0.0, "rlnLogLikelihood": loglik, "rlnAveragePmax": ave_pmax,
    }
    freq = shells / (box * pixel)
    ang = [resolution_angstrom(int(i), box, pixel) for i in shells]
    complete = model.completeness if model.completeness is not None else torch.zeros((n_classes, len(shells)))
    estimated, blocks = class_resolutions_angstrom(model, box, pixel), {}
    for k in range(n_classes):
        blocks[f"model_class_{k + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": shells, "rlnResolution": freq, "rlnAngstromResolution": ang,
            "rlnSsnrMap": model.ssnr[k].numpy(),
            "rlnGoldStandardFsc": model.fsc[k].numpy(), "rlnFourierCompleteness": complete[k].numpy(),
            "rlnReferenceTau2": model.tau2[k].numpy(),
        })
    overall = [float(c[: state.resolution_shell + 1].mean()) for c in complete.numpy()]
    classes = pd.DataFrame({
        "rlnReferenceImage": map_names, "rlnClassDistribution": model.class_prior,
        "rlnAccuracyRotations": [acc_rot] * n_classes, "rlnAccuracyTranslationsAngst": [acc_trans_angstrom] * n_classes,
        "rlnEstimatedResolution": estimated, "rlnOverallFourierCompleteness": overall,
    })
    out = {"model_general": general, "model_classes": classes, **blocks}
    for g in range(n_groups):
        box_g, pixel_g = group_sizes[g] if group_sizes else (box, pixel)
        own = np.arange(box_g // 2 + 1)
        out[f"model_optics_group_{g + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": own, "rlnResolution": own / (box_g * pixel_g),
            "rlnSigma2Noise": model.sigma2_noise[g, : box_g // 2 + 1].numpy()})
    out["model_groups"] = pd.DataFrame({
        "rlnGroupNumber": np.arange(1, len(group_counts) + 1),
        "rlnGroupName": [f"group_{i + 1}" for i in range(len(group_counts))],
        "rlnGroupNrParticles": group_counts, "rlnGroupScaleCorrection": np.resize(model.scale, len(group_counts)),
    })
    for k in range(n_classes):
        out[f"model_pdf_orient_class_{k + 1}"] = pd.DataFrame({"rlnOrientationDistribution": model.pdf_direction[k]})
    return out


def write_iteration(folder: Path, prefix: str, *, maps: dict[str, torch.Tensor], pixel: float,
                    data: ParticleTable | None, models: dict[str, dict], state: dict, map_suffix: str = ".mrc") -> None:
    """Write one iteration's files: `{prefix}_{name}.mrc` (`.mrcs` for image stacks), `{prefix}_data.star`,
    `{prefix}_{name}model.star` and `{prefix}_state.json` (for --continue)."""
    for name, volume in maps.items():
        write_map(folder / f"{prefix}_{name}{map_suffix}", volume.float().numpy(), pixel)
    for name, blocks in models.items():
        write_star_blocks(folder / f"{prefix}_{name}model.star", blocks)
    if data is not None:
        write_particles_star(folder / f"{prefix}_data.star", data)
    with atomic_path(folder / f"{prefix}_state.json") as tmp:
        tmp.write_text(json.dumps(state, indent=1))


def model_to_json(m: Model) -> dict:
    return {"sigma2_noise": m.sigma2_noise.tolist(), "tau2": m.tau2.tolist(), "fsc": m.fsc.tolist(),
            "ssnr": m.ssnr.tolist(), "sigma_offset_angstrom": m.sigma_offset_angstrom,
            "pdf_direction": m.pdf_direction.tolist(), "class_prior": m.class_prior.tolist(), "rho": m.rho,
            "scale": np.asarray(m.scale).tolist(), "avg_norm": m.avg_norm, "pad": m.pad}


def model_from_json(d: dict, references: list[torch.Tensor]) -> Model:
    """A model saved by `model_to_json` (state files of single-class, single-group runs written
    before the class axis hold 1D spectra: they are read as one class and one group)."""
    t = lambda k: torch.atleast_2d(torch.tensor(d[k], dtype=torch.float64))  # noqa: E731
    return Model(references, t("sigma2_noise"), t("tau2"), t("fsc"), t("ssnr"), d["sigma_offset_angstrom"],
                 np.atleast_2d(d["pdf_direction"]), np.array(d.get("class_prior", [1.0])), d["rho"],
                 scale=np.array(d.get("scale", [1.0])), avg_norm=d.get("avg_norm", 1.0), pad=d.get("pad", 2))


def class_resolutions_angstrom(model: Model, box: int, pixel: float) -> list[float]:
    """Per class (Å): the last shell before data_vs_prior (SSNR) first falls below 1
    (RELION's rlnEstimatedResolution)."""
    out = []
    for k in range(model.n_classes):
        below = np.flatnonzero(model.ssnr[k].numpy()[1:] < 1)
        out.append(resolution_angstrom(int(below[0]) if len(below) else box // 2, box, pixel))
    return out


def add_class_numbers(report: Report, model: Model, counts: np.ndarray, *, box: int, pixel: float) -> None:
    """One line per class: particles (most probable class), π_k and estimated resolution."""
    for k, res in enumerate(class_resolutions_angstrom(model, box, pixel)):
        report.number(f"class {k + 1}", f"{int(counts[k])} particles, π {100 * model.class_prior[k]:.1f} %, "
                                        f"resolution {res:.2f} Å")


def add_iteration_numbers(report: Report, state: AutoRefineState, *, n_particles: int, ave_pmax: float,
                          sigma_offset_angstrom: float, pixel: float, angular_step_deg: float | None) -> None:
    """The per-iteration figures every particle job shows: iteration, particles, <Pmax>, sampling."""
    report.number("iteration", state.iteration)
    report.number("particles", n_particles)
    report.number("average Pmax", f"{ave_pmax:.3f}")
    if angular_step_deg is not None:
        local = f", local searches σ {state.sigma_ang_deg:.2f}°" if state.sigma_ang_deg else ""
        report.number("angular sampling", f"HEALPix order {state.healpix_order} + {state.oversampling} "
                                          f"oversampled = {angular_step_deg:.2f}°{local}")
    report.number("offset search", f"±{state.offset_range_px * pixel:.1f} Å in {state.offset_step_px * pixel:.2f} Å "
                                    f"steps; σ_offset {sigma_offset_angstrom:.2f} Å")
    report.number("image size used (window)", f"{state.current_size} px")


def add_model_figures(report: Report, model: Model, *, box: int, pixel: float, labels: list[str],
                      group_sizes: list[tuple[int, float]] | None = None) -> None:
    """Central sections of each reference (3D) and the σ², τ² and SSNR spectra (σ² of each optics
    group over its own shells, `group_sizes` (box px, pixel Å) per group)."""
    if model.references[0].ndim == 3:
        report.figure("Central sections of each map.",
                      figure_central_sections([r.float().numpy() for r in model.references], labels))
    report.figure("Noise power σ²(ν) per optics group, signal prior τ²(ν) and SSNR(ν) per class, learned from the "
                  "data (per complex component; shells without a value are left out).",
                  figure_spectra(model.sigma2_noise.numpy(), model.tau2.numpy(), model.ssnr.numpy(), box=box,
                                 pixel_size=pixel, group_sizes=group_sizes))
