"""Experiment 4 — classification of a two-state mixture with K = 4.

A 50/50 mixture of 10,000 β-galactosidase (5A1A) particles with and without chain D (a quarter of
the mass; the issue's ribosome ±EF-G setting, with a structure from ../shared), SNR 0.05, box 64 at
4 Å, classified by `ember class3d` with K = 4 from the consensus map low-passed to 40 Å, aligning as
it goes at HEALPix order 1 (15°: order 2 costs ~6× the time and gave the same accuracy on a
2,000-particle cut, see the README's class3d benchmark). Per iteration: the class
sizes π_k and each class's estimated resolution (model.star); at the end the confusion matrix of
the true states against the classes, and the fraction of particles in a class whose majority is
their own state.

    python -m benchmarks.experiments.classification [--quick] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import starfile  # noqa: E402

from benchmarks.experiments.common import parser, structure, write_results  # noqa: E402
from ember.io.atomic import atomic_path  # noqa: E402
from ember.io.mrc import read_map, write_map  # noqa: E402
from ember.io.star import read_particles_star  # noqa: E402
from ember.jobs.class3d import Class3DConfig, class3d  # noqa: E402
from ember.jobs.simulate import SimulateConfig, simulate  # noqa: E402

K = 4


def run(out: Path, quick: bool, seed: int) -> dict:
    n, iterations, order = (300, 3, 1) if quick else (10000, 25, 1)
    box, pixel, snr = (32, 7.0, 0.1) if quick else (64, 4.0, 0.05)
    start = time.perf_counter()
    star = simulate(SimulateConfig(output=out / "data", n_particles=n, model_path=structure("5a1a.cif.gz"),
                                   states=(("A", "B", "C", "D"), ("A", "B", "C")), box=box, pixel_size=pixel, snr=snr,
                                   max_offset_px=2.0, seed=seed))
    truths = [read_map(star.parent / f"truth_class00{k}.mrc")[0] for k in (1, 2)]
    write_map(star.parent / "consensus.mrc", (truths[0] + truths[1]) / 2, pixel)
    folder = out / "class3d"
    class3d(Class3DConfig(star=star, reference=star.parent / "consensus.mrc", output=folder, n_classes=K,
                          particle_diameter_angstrom=220.0, ini_high_angstrom=40.0, iterations=iterations,
                          healpix_order=order, seed=seed))
    sizes, resolutions = [], []
    for it in range(1, iterations + 1):
        classes = starfile.read(folder / f"run_it{it:03d}_model.star", always_dict=True)["model_classes"]
        sizes.append(classes["rlnClassDistribution"].to_numpy())
        resolutions.append(classes["rlnEstimatedResolution"].to_numpy())
    true = read_particles_star(star).particles["rlnClassNumber"].to_numpy() - 1
    found = read_particles_star(folder / f"run_it{iterations:03d}_data.star").particles["rlnClassNumber"].to_numpy() - 1
    confusion = np.zeros((2, K), dtype=int)
    np.add.at(confusion, (true, found), 1)
    majority = confusion.argmax(axis=0)  # each class's majority state
    correct = sum(confusion[majority[k], k] for k in range(K)) / n
    rows = [{"class": k + 1, "particles": int(confusion[:, k].sum()),
             "state 1 (A–D)": int(confusion[0, k]), "state 2 (A–C)": int(confusion[1, k]),
             "π_k at the end": float(sizes[-1][k]), "resolution at the end (Å)": float(resolutions[-1][k])}
            for k in range(K)]
    summary = {
        "data": f"5A1A ±chain D 50/50, {n} particles, box {box} at {pixel} Å/px, SNR {snr}; K = {K}, "
                f"{iterations} iterations, HEALPix order {order}",
        "particles in a class whose majority is their own state": f"{100 * correct:.1f} %",
        "wall time (s)": round(time.perf_counter() - start, 1),
    }
    write_results(out, "classification", rows, summary)
    _figure(out / "classification.png", np.array(sizes), np.array(resolutions), confusion)
    return summary


def _figure(path: Path, sizes: np.ndarray, resolutions: np.ndarray, confusion: np.ndarray) -> None:
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    its = np.arange(1, len(sizes) + 1)
    for k in range(sizes.shape[1]):
        a.plot(its, 100 * sizes[:, k], marker="o", ms=3, label=f"class {k + 1}")
        b.plot(its, resolutions[:, k], marker="o", ms=3, label=f"class {k + 1}")
    a.set_xlabel("iteration")
    a.set_ylabel("class size π_k (%)")
    a.legend(fontsize=7)
    b.set_xlabel("iteration")
    b.set_ylabel("estimated resolution (Å)")
    b.invert_yaxis()
    image = c.imshow(confusion, cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion):
        c.text(j, i, str(v), ha="center", va="center", fontsize=8)
    c.set_xticks(range(confusion.shape[1]), [f"class {k + 1}" for k in range(confusion.shape[1])], fontsize=8)
    c.set_yticks((0, 1), ["A–D", "A–C"])
    c.set_title("true state × class", fontsize=10)
    fig.colorbar(image, ax=c)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main() -> None:
    args = parser(__doc__.splitlines()[0], "experiments_out/classification").parse_args()
    for key, value in run(args.out, args.quick, args.seed).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
