"""Experiment 5 — model bias: what a local optimiser keeps from its start.

Simulated particles of adenylate kinase (1AKE, chain A) are refined from a wrong reference, the
truth with a fake domain added (a Gaussian blob with a quarter of the protein's mass on its
surface), low-passed to 15 Å: once with projection matching (`--maxcc --no_halves`) and once with
the gold-standard regularised likelihood; and once from an Ember initial model made without any
reference. For each result: the FSC with the truth at 0.5 (after superposing the map on the truth,
hand included) and how much of the fake domain survives — the mean density inside the blob,
relative to the start's, after scaling each map onto the truth by least squares.

    python -m benchmarks.experiments.model_bias [--quick] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.experiments.common import crossing_angstrom, fsc_to, parser, structure, write_results  # noqa: E402
from ember.io.atomic import atomic_path  # noqa: E402
from ember.io.mrc import read_map, write_map  # noqa: E402
from ember.jobs.align_maps import align_maps  # noqa: E402
from ember.jobs.initial_model import InitialModelConfig, initial_model  # noqa: E402
from ember.jobs.refine3d import Refine3DConfig, refine3d  # noqa: E402
from ember.jobs.simulate import SimulateConfig, simulate  # noqa: E402
from ember.operators.filters import lowpass_raised_cosine  # noqa: E402

INI_HIGH = 15.0


def fake_domain(truth: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """A Gaussian blob (σ 2.5 px) holding `fraction` of the map's mass, centred just outside the
    protein along +x at the height of its centre."""
    n = truth.shape[0]
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    profile = truth.sum(axis=(0, 1))  # mass along x
    edge = int(np.flatnonzero(profile > 0.05 * profile.max()).max()) - n // 2
    blob = np.exp(-((x - min(edge + 1, n // 2 - 5)) ** 2 + y**2 + z**2) / (2 * 2.5**2))
    return (blob * fraction * truth.clip(min=0).sum() / blob.sum()).astype(np.float32)


def scaled_to(volume: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """`volume` times the least-squares factor onto `truth`."""
    return volume * float((volume * truth).sum() / (volume * volume).sum())


def run(out: Path, quick: bool, seed: int) -> dict:
    n, snr, iterations, initial_iterations = (150, 0.5, 3, 10) if quick else (500, 0.5, 50, 60)
    box, pixel, diameter = 32, 2.5, 70.0
    start = time.perf_counter()
    star = simulate(SimulateConfig(output=out / "data", n_particles=n, model_path=structure("1ake.cif"), chains=("A",),
                                   box=box, pixel_size=pixel, snr=snr, defocus_min_um=1.0, defocus_max_um=2.5,
                                   seed=seed))
    truth, _ = read_map(star.parent / "truth.mrc")
    blob = fake_domain(truth)
    wrong = out / "wrong_reference.mrc"
    write_map(wrong, truth + blob, pixel)
    inside = blob > 0.5 * blob.max()
    shell = box * pixel / INI_HIGH
    start_map = lowpass_raised_cosine(torch.from_numpy(truth + blob).double(), shell).numpy()
    start_truth = lowpass_raised_cosine(torch.from_numpy(truth).double(), shell).numpy()
    start_excess = float((scaled_to(start_map, truth) - start_truth)[inside].mean())
    common = dict(star=star, particle_diameter_angstrom=diameter, ini_high_angstrom=INI_HIGH,
                  max_iterations=iterations, seed=seed)
    results = {}
    t0 = time.perf_counter()
    results["projection matching from the wrong reference"] = (refine3d(Refine3DConfig(
        reference=wrong, output=out / "maxcc", maxcc=True, no_halves=True, **common)), time.perf_counter() - t0)
    t0 = time.perf_counter()
    results["gold standard from the wrong reference"] = (refine3d(Refine3DConfig(
        reference=wrong, output=out / "gold_standard", **common)), time.perf_counter() - t0)
    t0 = time.perf_counter()
    first = initial_model(InitialModelConfig(star=star, output=out / "initial_model",  # order 1, as the demo
                                             particle_diameter_angstrom=diameter, iterations=initial_iterations,
                                             auto_sampling=False, seed=seed))
    results["gold standard from an Ember initial model"] = (refine3d(Refine3DConfig(
        reference=first, output=out / "from_initial_model", **{**common, "ini_high_angstrom": 30.0})),
        time.perf_counter() - t0)
    rows, curves = [], {}
    for label, (path, seconds) in results.items():
        volume = read_map(path)[0]
        aligned = align_maps(truth, volume, pixel).aligned
        low = lowpass_raised_cosine(torch.from_numpy(aligned).double(), shell).numpy()
        kept = float((scaled_to(low, truth) - start_truth)[inside].mean()) / start_excess
        curve = fsc_to(aligned, truth)
        curves[label] = curve
        rows.append({"run": label, "FSC 0.5 with the truth (Å)": crossing_angstrom(curve, 0.5, box, pixel),
                     "fake domain kept (fraction of the start's)": kept, "seconds": round(seconds, 1)})
    summary = {
        "data": f"1AKE chain A, {n} particles, box {box} at {pixel} Å/px, SNR {snr}; wrong reference: truth + a "
                f"fake domain of 25 % of its mass, low-passed to {INI_HIGH:g} Å",
        "wall time (s)": round(time.perf_counter() - start, 1),
    }
    write_results(out, "model_bias", rows, summary)
    _figure(out / "model_bias.png", curves, rows, box, pixel)
    return summary


def _figure(path: Path, curves: dict, rows: list[dict], box: int, pixel: float) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    freq = np.arange(box // 2 + 1) / (box * pixel)
    for label, curve in curves.items():
        a.plot(freq, curve, label=label)
    a.axhline(0.5, color="grey", lw=0.8)
    a.set_xlabel("spatial frequency (Å⁻¹)")
    a.set_ylabel("FSC with the truth")
    a.legend(fontsize=7)
    kept = [r["fake domain kept (fraction of the start's)"] for r in rows]
    b.barh(range(len(rows)), kept, color=["tab:blue", "tab:orange", "tab:green"])
    b.set_yticks(range(len(rows)), [r["run"] for r in rows], fontsize=7)
    b.invert_yaxis()
    b.set_xlabel("fake domain kept (1 = as strong as in the start)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main() -> None:
    args = parser(__doc__.splitlines()[0], "experiments_out/model_bias").parse_args()
    for key, value in run(args.out, args.quick, args.seed).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
