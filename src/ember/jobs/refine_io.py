"""RELION-layout outputs of refinement jobs: maps, data.star, model.star, state for --continue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ember.inference.model import HalfModel, ParticleResults
from ember.inference.schedule import AutoRefineState
from ember.io.atomic import atomic_path
from ember.io.mrc import write_map
from ember.io.star import ParticleTable, write_particles_star, write_star_blocks
from ember.maths.fourier import resolution_angstrom


def data_table(base: ParticleTable, results: ParticleResults, subsets: np.ndarray, pixel: float,
               image_names: list[str]) -> ParticleTable:
    """Input columns plus the refined pose and per-particle statistics (RELION labels)."""
    t = base.copy()
    p = t.particles
    p["rlnImageName"] = image_names
    p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"] = results.angles.T
    p["rlnOriginXAngst"], p["rlnOriginYAngst"] = (results.offsets_px * pixel).T
    p["rlnClassNumber"] = 1
    p["rlnNormCorrection"] = 1.0
    p["rlnLogLikeliContribution"] = results.loglik
    p["rlnMaxValueProbDistribution"] = results.pmax
    p["rlnNrOfSignificantSamples"] = results.n_significant
    p["rlnRandomSubset"] = subsets
    return t


def model_blocks(model: HalfModel, state: AutoRefineState, *, box: int, pixel: float, map_name: str,
                 ave_pmax: float, loglik: float, acc_rot: float, acc_trans_angstrom: float) -> dict:
    """The blocks of a RELION model.star (model_general, classes, class_1, optics group, groups)."""
    shells = np.arange(box // 2 + 1)
    res = resolution_angstrom(state.resolution_shell, box, pixel)
    general = {
        "rlnReferenceDimensionality": 3, "rlnDataDimensionality": 2, "rlnOriginalImageSize": box,
        "rlnCurrentResolution": 1.0 / res, "rlnCurrentImageSize": state.current_size, "rlnPaddingFactor": 2,
        "rlnIsHelix": 0, "rlnFourierSpaceInterpolator": 1, "rlnMinRadiusNnInterpolation": 10,
        "rlnPixelSize": pixel, "rlnNrClasses": 1, "rlnNrBodies": 1, "rlnNrGroups": 1, "rlnNrOpticsGroups": 1,
        "rlnTau2FudgeFactor": 1.0, "rlnNormCorrectionAverage": 1.0,
        "rlnSigmaOffsetsAngst": model.sigma_offset_angstrom, "rlnOrientationalPriorMode": 0,
        "rlnSigmaPriorRotAngle": state.sigma_ang_deg or 0.0, "rlnSigmaPriorTiltAngle": state.sigma_ang_deg or 0.0,
        "rlnSigmaPriorPsiAngle": state.sigma_ang_deg or 0.0, "rlnLogLikelihood": loglik, "rlnAveragePmax": ave_pmax,
    }
    ssnr = model.ssnr.numpy()
    above = np.flatnonzero(ssnr[1:] < 1)
    est = resolution_angstrom(int(above[0]) if len(above) else box // 2, box, pixel)
    classes = pd.DataFrame({
        "rlnReferenceImage": [map_name], "rlnClassDistribution": [1.0], "rlnAccuracyRotations": [acc_rot],
        "rlnAccuracyTranslationsAngst": [acc_trans_angstrom], "rlnEstimatedResolution": [est],
        "rlnOverallFourierCompleteness": [1.0],
    })
    freq = shells / (box * pixel)
    ang = [resolution_angstrom(int(i), box, pixel) for i in shells]
    class1 = pd.DataFrame({
        "rlnSpectralIndex": shells, "rlnResolution": freq, "rlnAngstromResolution": ang, "rlnSsnrMap": ssnr,
        "rlnGoldStandardFsc": model.fsc.numpy(), "rlnReferenceTau2": model.tau2.numpy(),
    })
    optics = pd.DataFrame({"rlnSpectralIndex": shells, "rlnResolution": freq,
                           "rlnSigma2Noise": model.sigma2_noise.numpy()})
    groups = pd.DataFrame({"rlnGroupNumber": [1], "rlnGroupName": ["group_1"], "rlnGroupScaleCorrection": [1.0]})
    return {"model_general": general, "model_classes": classes, "model_class_1": class1,
            "model_optics_group_1": optics, "model_groups": groups}


def write_iteration(folder: Path, prefix: str, *, maps: dict[str, torch.Tensor], pixel: float,
                    data: ParticleTable | None, models: dict[str, dict], state: dict) -> None:
    """Write one iteration's files: `{prefix}_{name}.mrc`, `{prefix}_data.star`,
    `{prefix}_{name}model.star` and `{prefix}_state.json` (for --continue)."""
    for name, volume in maps.items():
        write_map(folder / f"{prefix}_{name}.mrc", volume.float().numpy(), pixel)
    for name, blocks in models.items():
        write_star_blocks(folder / f"{prefix}_{name}model.star", blocks)
    if data is not None:
        write_particles_star(folder / f"{prefix}_data.star", data)
    with atomic_path(folder / f"{prefix}_state.json") as tmp:
        tmp.write_text(json.dumps(state, indent=1))


def half_model_to_json(m: HalfModel) -> dict:
    return {"sigma2_noise": m.sigma2_noise.tolist(), "tau2": m.tau2.tolist(), "fsc": m.fsc.tolist(),
            "ssnr": m.ssnr.tolist(), "sigma_offset_angstrom": m.sigma_offset_angstrom,
            "pdf_direction": m.pdf_direction.tolist(), "rho": m.rho}


def half_model_from_json(d: dict, reference: torch.Tensor) -> HalfModel:
    t = lambda k: torch.tensor(d[k], dtype=torch.float64)  # noqa: E731
    return HalfModel(reference, t("sigma2_noise"), t("tau2"), t("fsc"), t("ssnr"), d["sigma_offset_angstrom"],
                     np.array(d["pdf_direction"]), d["rho"])
