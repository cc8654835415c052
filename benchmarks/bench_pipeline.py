"""Issue 10's pipeline: `initial-model` → `refine3d --ref initial_model.mrc` against `refine3d` from
the ground truth low-pass filtered to 40 Å, on the same particles: final resolutions side by side.

Run: python -m benchmarks.bench_pipeline [--structure 5a1a] [--n 10000] [--box 96] [--angpix Å]
     [--snr 0.05] [--iter 200] [--fixed_sampling] [--seed 1]

Data as `bench_initial_model` (CTF on, defocus 1–3 µm; without --angpix the smallest 0.1 Å pixel
that fits the model with 15 % to spare; particle diameter = 2 × model radius + 20 Å). Both
refinements start at `--ini_high 40` with the same seed and settings. Printed per start: wall time
(the initial model's included in its row), the reported resolution (FSC 0.143 of the two unfiltered
half maps) and the resolution against the truth (FSC 0.5 after `align_maps`, either hand), and the
ratio of the two starts' truth resolutions (bar: the initial model's within 5 %). results.json in
the run's folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.bench_initial_model import fitting_pixel, model_file, model_radius
from benchmarks.common import table
from benchmarks.experiments.common import crossing_angstrom, fsc_to
from ember.io.mrc import read_map
from ember.jobs.align_maps import align_maps
from ember.jobs.initial_model import InitialModelConfig, initial_model
from ember.jobs.refine3d import Refine3DConfig, refine3d
from ember.jobs.simulate import SimulateConfig, simulate


def refined(folder: Path, final: Path, truth, box: int, pixel: float) -> dict:
    """Reported (half maps, FSC 0.143) and true (FSC 0.5 vs truth after alignment) resolution, Å."""
    halves = [read_map(folder / f"run_half{h}_class001_unfil.mrc")[0] for h in (1, 2)]
    fit = align_maps(truth, read_map(final)[0], pixel)
    return {"reported_angstrom": crossing_angstrom(fsc_to(*halves), 0.143, box, pixel),
            "vs_truth_angstrom": float(fit.fsc05_angstrom), "flipped": bool(fit.flipped)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ember_bench_pipeline"))
    ap.add_argument("--structure", default="5a1a")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--angpix", type=float, default=None, help="default: the smallest that fits the model")
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--iter", type=int, default=200, help="initial-model iterations")
    ap.add_argument("--fixed_sampling", action="store_true", help="initial model at HEALPix order 1 throughout")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    path = model_file(args.structure)
    radius = model_radius(path)
    pixel = args.angpix or fitting_pixel(radius, args.box)
    diameter = min(2 * radius + 20, args.box * pixel)
    w = args.work / (f"{args.structure}_n{args.n}_b{args.box}_a{pixel:g}_snr{args.snr:g}_it{args.iter}"
                     f"{'_fixed' if args.fixed_sampling else ''}")
    star = w / "sim" / "particles.star"
    if not star.exists():
        simulate(SimulateConfig(output=star.parent, n_particles=args.n, model_path=path, box=args.box,
                                pixel_size=pixel, snr=args.snr, ctf=True, seed=11))
    truth = read_map(star.parent / "truth.mrc")[0]
    common = dict(star=star, particle_diameter_angstrom=diameter, ini_high_angstrom=40.0, seed=args.seed,
                  threads=args.threads)
    results = {}
    t0 = time.perf_counter()
    start = initial_model(InitialModelConfig(star=star, output=w / "initial_model", particle_diameter_angstrom=diameter,
                                             iterations=args.iter, auto_sampling=not args.fixed_sampling,
                                             seed=args.seed, threads=args.threads))
    initial_s = time.perf_counter() - t0
    final = refine3d(Refine3DConfig(reference=start, output=w / "from_initial_model", **common))
    results["initial model"] = {**refined(w / "from_initial_model", final, truth, args.box, pixel),
                                "initial_model_s": initial_s, "wall_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    final = refine3d(Refine3DConfig(reference=star.parent / "truth.mrc", output=w / "from_truth", **common))
    results["truth at 40 Å"] = {**refined(w / "from_truth", final, truth, args.box, pixel),
                                "wall_s": time.perf_counter() - t0}
    ratio = results["initial model"]["vs_truth_angstrom"] / results["truth at 40 Å"]["vs_truth_angstrom"]
    head = f"{path.name}, {args.n} particles, box {args.box} at {pixel:g} Å, SNR {args.snr:g}"
    rows = []
    for label, r in results.items():
        extra = f" (initial model {r['initial_model_s']:.0f} s)" if "initial_model_s" in r else ""
        rows += [(f"{head}, refine3d from the {label}: wall time (s)", f"{r['wall_s']:.0f}{extra}", "—"),
                 (f"{head}, refine3d from the {label}: reported, FSC 0.143 of the halves (Å)",
                  f"{r['reported_angstrom']:.2f}", "—"),
                 (f"{head}, refine3d from the {label}: FSC 0.5 vs truth after alignment (Å; flipped "
                  f"{r['flipped']})", f"{r['vs_truth_angstrom']:.2f}", "—")]
    rows.append((f"{head}: truth resolution from the initial model / from the truth at 40 Å", f"{ratio:.3f}",
                 "≤ 1.05"))
    (w / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                "angpix": pixel, "results": results, "ratio": ratio}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
