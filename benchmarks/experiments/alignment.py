"""Experiment 2 — only low-resolution data drive alignment.

Align the particles of a simulated data set (6MSM, CFTR) by one E-step of Ember's engine (global
HEALPix × ψ × translation search, marginalised, σ² from the images as at the start of a
refinement) against references of decreasing information: the truth low-passed to 20, 10 and 8 Å
and at Nyquist; then the particles of half 1 against the map reconstructed (known poses, learned
τ²) from half 1 only, as gold-standard refinement does, and against the map from all particles.
The measure is the median angle between each particle's most probable orientation and its true
one: "orientations from half reconstructions are as good as those from whole reconstructions".

    python -m benchmarks.experiments.alignment [--quick] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.experiments.common import parser, structure, write_results  # noqa: E402
from ember.inference.engine import run_expectation  # noqa: E402
from ember.inference.estep import EStepSettings  # noqa: E402
from ember.inference.images import FrequencyWindow  # noqa: E402
from ember.inference.model import Model, ParticleResults, SamplingState, Sums  # noqa: E402
from ember.inference.mstep import first_per_group, initial_sigma2  # noqa: E402
from ember.inference.sampling import asymmetric_unit, translation_grid, uniform_direction_pdf  # noqa: E402
from ember.inference.schedule import coarse_size  # noqa: E402
from ember.io.atomic import atomic_path  # noqa: E402
from ember.io.mrc import read_map, write_map  # noqa: E402
from ember.io.particles import ParticleDataSet  # noqa: E402
from ember.jobs.reconstruct import backproject  # noqa: E402
from ember.jobs.simulate import SimulateConfig, simulate  # noqa: E402
from ember.maths.fsc import fsc  # noqa: E402
from ember.maths.rotations import angular_distance_deg, euler_to_matrix  # noqa: E402
from ember.maths.symmetry import symmetry_operators  # noqa: E402
from ember.operators.filters import lowpass_raised_cosine  # noqa: E402
from ember.operators.reconstructor import Reconstructor, tau2_from_fsc  # noqa: E402

ORDER, OVERSAMPLING, OFFSET_RANGE, OFFSET_STEP = 2, 1, 4.0, 1.0  # 7.5° coarse, 3.75° fine; ±4 px in 1 px steps


def align(dataset: ParticleDataSet, indices: np.ndarray, reference: np.ndarray, sigma2: torch.Tensor,
          diameter: float) -> np.ndarray:
    """Most probable orientations (len(indices), 3) degrees from one global E-step against `reference`."""
    box, pixel = dataset.box, dataset.pixel_size
    c1 = symmetry_operators("C1")
    directions = asymmetric_unit(ORDER, c1)
    model = Model.initial([torch.from_numpy(reference).double()], sigma2, 10.0,
                          uniform_direction_pdf(ORDER, directions))
    sampling = SamplingState(ORDER, OVERSAMPLING, OFFSET_RANGE, OFFSET_STEP, directions)
    fine = FrequencyWindow.build(box, box)
    coarse = FrequencyWindow.build(box, coarse_size(ORDER, diameter, box, pixel, box))
    settings = EStepSettings(coarse, fine, torch.from_numpy(translation_grid(OFFSET_RANGE, OFFSET_STEP)), OFFSET_STEP,
                             OVERSAMPLING, pixel)
    sums = Sums.empty(box, 1, dataset.n_optics_groups, 12 * 4**ORDER, r_max=box // 2)
    results = ParticleResults.empty(len(dataset))
    zeros = np.zeros((len(dataset), 2))
    run_expectation(dataset, indices, model, sampling, settings, sums, results, prior_angles_deg=results.angles,
                    prior_offsets_px=zeros, symmetry=c1, mask_radius_px=diameter / (2 * pixel), batch_size=128)
    return results.angles[indices]


def angular_errors(found_deg: np.ndarray, true_deg: np.ndarray) -> np.ndarray:
    return angular_distance_deg(euler_to_matrix(torch.from_numpy(found_deg)),
                                euler_to_matrix(torch.from_numpy(true_deg))).numpy()


def run(out: Path, quick: bool, seed: int) -> dict:
    n, box, pixel, snr = (300, 32, 6.0, 0.1) if quick else (2000, 64, 3.0, 0.05)
    diameter = 150.0
    start = time.perf_counter()
    star = simulate(SimulateConfig(output=out / "data", n_particles=n, model_path=structure("6msm.pdb.gz"), box=box,
                                   pixel_size=pixel, snr=snr, defocus_min_um=1.0, defocus_max_um=3.0, seed=seed))
    truth, _ = read_map(star.parent / "truth.mrc")
    dataset = ParticleDataSet.from_star(star)
    true_angles = dataset.angles_deg()
    halves = np.random.default_rng(seed).permutation(n) % 2 + 1  # the gold-standard split
    sigma2 = initial_sigma2(dataset, first_per_group(dataset), diameter / (2 * pixel))
    everyone = np.arange(n)
    rows, references = [], []
    for cut in (20.0, 10.0, 8.0, None):
        if cut is not None and cut <= 2 * pixel:
            continue
        label = f"truth low-passed to {cut:g} Å" if cut else f"truth at Nyquist ({2 * pixel:g} Å)"
        ref = truth if cut is None else lowpass_raised_cosine(torch.from_numpy(truth).double(), box * pixel / cut)
        references.append((label, np.asarray(ref), everyone))
    half1, whole = half_and_whole_maps(dataset, halves)
    write_map(out / "half1.mrc", half1, pixel)
    write_map(out / "whole.mrc", whole, pixel)
    first = np.flatnonzero(halves == 1)
    references += [("half-1 map (half-1 particles)", half1, first),
                   ("whole-data map (half-1 particles)", whole, first)]
    for label, ref, who in references:
        t0 = time.perf_counter()
        err = angular_errors(align(dataset, who, ref, sigma2, diameter), true_angles[who])
        rows.append({"reference": label, "particles": len(who), "median angular error (°)": float(np.median(err)),
                     "mean angular error (°)": float(err.mean()), "seconds": round(time.perf_counter() - t0, 1)})
    half_err, whole_err = rows[-2]["median angular error (°)"], rows[-1]["median angular error (°)"]
    difference = abs(half_err - whole_err) / whole_err
    summary = {
        "data": f"6MSM, {n} particles, box {box} at {pixel} Å/px, SNR {snr}, defocus 1–3 µm; "
                f"search {7.5}° coarse / {3.75}° fine, ±{OFFSET_RANGE:g} px",
        "half-map vs whole-map median angular error": f"{half_err:.2f}° vs {whole_err:.2f}° ({100 * difference:.1f} %)",
        "bar (differ by < 10 %)": "met" if difference < 0.10 else "missed",
        "wall time (s)": round(time.perf_counter() - start, 1),
    }
    write_results(out, "alignment", rows, summary)
    _figure(out / "alignment.png", rows)
    return summary


def half_and_whole_maps(dataset: ParticleDataSet, halves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From the known poses: the half-1 map regularised as refine3d regularises a half (τ² from the
    two halves' FSC) and the map of all particles (τ² from the same FSC, joined)."""
    recs = [Reconstructor(dataset.box), Reconstructor(dataset.box)]
    for h, rec in zip((1, 2), recs, strict=True):
        backproject(dataset, np.flatnonzero(halves == h), rec, ctf=True)
    curve = fsc(*(r.reconstruct().double() for r in recs))
    tau2 = tau2_from_fsc(curve, recs[0].sigma2_ref())
    half1 = recs[0].reconstruct(tau2=tau2).numpy()
    whole = Reconstructor(dataset.box)
    whole.add_prepared(*recs)
    tau2 = tau2_from_fsc(curve, whole.sigma2_ref(), joined=True)
    return half1, whole.reconstruct(tau2=tau2).numpy()


def _figure(path: Path, rows: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    labels = [r["reference"] for r in rows]
    values = [r["median angular error (°)"] for r in rows]
    colours = ["tab:blue"] * (len(rows) - 2) + ["tab:orange", "tab:green"]
    ax.barh(range(len(rows)), values, color=colours)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median angular error against the true orientations (°)")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}°", va="center", fontsize=8)
    ax.set_title("Alignment against references of decreasing information", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main() -> None:
    args = parser(__doc__.splitlines()[0], "experiments_out/alignment").parse_args()
    for key, value in run(args.out, args.quick, args.seed).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
