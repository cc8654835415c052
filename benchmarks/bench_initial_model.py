"""Issue 10 bars: an initial model from the particles alone, scored against the truth after alignment.

Run: python -m benchmarks.bench_initial_model [--structures 5a1a,6msm] [--n 10000] [--box 96] [--angpix Å]
     [--snr 0.05] [--seeds 5] [--iter 200] [--fixed_sampling] [--no_ctf] [--relion]

Data: each structure of ../shared/data/structures/ (5a1a.cif.gz β-galactosidase, 6msm.pdb.gz CFTR)
simulated with `ember.jobs.simulate` (uniform orientations, defocus 1–3 µm, CTF on, seed 11). Without
--angpix the pixel size is the smallest 0.1 Å step that leaves the model's largest radius + 5 Å
(what `ember simulate` demands) with 15 % to spare in the box; the particle diameter is twice that
radius plus 20 Å (at most the box).

Each seed runs `initial_model(InitialModelConfig(star, output, particle_diameter_angstrom=D,
iterations=--iter, seed=s, threads=2, auto_sampling=not --fixed_sampling))` in this process, then
`align_maps(truth, initial_model, pixel)` with both hands tried. Printed per run: wall time, peak
RSS of this process so far (`resource.getrusage`; it only grows, so the first run of a structure
after a smaller one is the one to read), whether the mirror image fitted, the correlation and the
FSC 0.5 resolution against the truth; per structure the count of seeds better than 20 Å (bar: ≥ 4
of 5). Figures go to the terminal, to results.json in each structure's folder and (all of this
invocation's) in --work.

`--relion` also runs RELION 3.1.3's legacy SGD initial model on the same particles and seeds, with
its GUI's defaults (`relion_refine --sgd --denovo_3dref --sgd_ini_iter 50 --sgd_inbetween_iter 200
--sgd_fin_iter 50 --sgd_ini_resol 35 --sgd_fin_resol 15 --sgd_ini_subset 100 --sgd_fin_subset 500
--K 1 --sym C1 --flatten_solvent --zero_mask --pad 2 --skip_gridding --oversampling 1 --healpix_order 1
--offset_range 6 --offset_step 4 --j 2 --random_seed S`, `--ctf` unless `--no_ctf`), one process of two
threads after Ember's run, and scores its last map the same way. `--no_ctf` simulates and refines
without a CTF: Debian's RELION 3.1.3 does not align CTF-modulated images (README, refinement
against RELION), so only CTF-free data compare the methods.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED, table
from ember.io.atomic_model import atom_positions, read_model
from ember.io.mrc import read_map
from ember.jobs.align_maps import align_maps
from ember.jobs.initial_model import InitialModelConfig, initial_model
from ember.jobs.simulate import SimulateConfig, simulate

FILES = {"5a1a": "5a1a.cif.gz", "6msm": "6msm.pdb.gz"}
BAR_ANGSTROM = 20.0


def model_file(name: str) -> Path:
    path = SHARED / FILES.get(name, name)
    if not path.exists():
        raise SystemExit(f"{path} not found (give names of ../shared/data/structures/, e.g. 5a1a,6msm)")
    return path


def model_radius(path: Path) -> float:
    """Largest distance (Å) of an atom from the model's centroid (the frame `ember simulate` uses)."""
    pos = atom_positions(read_model(path))
    return float(np.linalg.norm(pos - pos.mean(axis=0), axis=1).max())


def fitting_pixel(radius: float, box: int) -> float:
    """Smallest 0.1-Å pixel with (radius + 5 Å) · 1.15 ≤ box · pixel / 2."""
    return math.ceil(2 * (radius + 5) * 1.15 / box * 10) / 10


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_structure(w: Path, path: Path, args) -> dict:
    radius = model_radius(path)
    pixel = args.angpix if args.angpix else fitting_pixel(radius, args.box)
    diameter = min(2 * radius + 20, args.box * pixel)
    sim = w / "sim"
    star = sim / "particles.star"
    t0 = time.perf_counter()
    if not star.exists():
        simulate(SimulateConfig(output=sim, n_particles=args.n, model_path=path, box=args.box, pixel_size=pixel,
                                snr=args.snr, ctf=not args.no_ctf, seed=11))
    sim_s = time.perf_counter() - t0
    truth, _ = read_map(sim / "truth.mrc")
    runs = []
    for seed in range(1, args.seeds + 1):
        out = w / f"seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = InitialModelConfig(star=star, output=out, particle_diameter_angstrom=diameter,
                                 iterations=args.iter, seed=seed, threads=args.threads,
                                 auto_sampling=not args.fixed_sampling, ctf=not args.no_ctf)
        t0 = time.perf_counter()
        result = initial_model(cfg)
        wall = time.perf_counter() - t0
        rss = peak_rss_gib()
        t1 = time.perf_counter()
        fit = align_maps(truth, read_map(result)[0], pixel)
        align_s = time.perf_counter() - t1
        run = {"seed": seed, "wall_s": wall, "peak_rss_gib_so_far": rss, "flipped": bool(fit.flipped),
               "correlation": float(fit.correlation), "fsc05_vs_truth_angstrom": float(fit.fsc05_angstrom),
               "align_s": align_s, "euler_deg": [float(x) for x in fit.euler_deg]}
        runs.append(run)
        print(f"{path.name} seed {seed}: {wall:.0f} s, peak RSS {rss:.2f} GiB, flipped {run['flipped']}, "
              f"correlation {run['correlation']:.3f}, FSC 0.5 vs truth {run['fsc05_vs_truth_angstrom']:.1f} Å "
              f"(align {align_s:.0f} s)", flush=True)
        if args.relion:
            run["relion"] = relion_sgd(w / f"relion_seed{seed}", star, diameter, seed, truth, pixel, not args.no_ctf)
            print(f"{path.name} seed {seed}, RELION 3.1.3 SGD: {run['relion']['wall_s']:.0f} s, flipped "
                  f"{run['relion']['flipped']}, correlation {run['relion']['correlation']:.3f}, FSC 0.5 vs truth "
                  f"{run['relion']['fsc05_vs_truth_angstrom']:.1f} Å", flush=True)
    good = sum(r["fsc05_vs_truth_angstrom"] < BAR_ANGSTROM for r in runs)
    return {"structure": path.name, "n": args.n, "box": args.box, "angpix": pixel, "snr": args.snr,
            "model_radius_angstrom": radius, "particle_diameter_angstrom": diameter, "iterations": args.iter,
            "simulate_s": sim_s, "runs": runs, "seeds_better_than_20A": good, "nyquist_angstrom": 2 * pixel}


def relion_sgd(out: Path, star: Path, diameter: float, seed: int, truth: np.ndarray, pixel: float,
               ctf: bool) -> dict:
    """RELION 3.1.3's SGD initial model with its GUI's defaults (300 iterations), then scored as Ember's."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = ["relion_refine", "--o", str(out / "run"), "--sgd_ini_iter", "50", "--sgd_inbetween_iter", "200",
           "--sgd_fin_iter", "50", "--sgd_write_iter", "20", "--sgd_ini_resol", "35", "--sgd_fin_resol", "15",
           "--sgd_ini_subset", "100", "--sgd_fin_subset", "500", "--sgd", "--denovo_3dref", "--i", str(star),
           *(["--ctf"] if ctf else []), "--K", "1", "--sym", "C1", "--flatten_solvent", "--zero_mask",
           "--dont_combine_weights_via_disc", "--pool", "3", "--pad", "2", "--skip_gridding",
           "--particle_diameter", f"{diameter:.0f}", "--oversampling", "1", "--healpix_order", "1",
           "--offset_range", "6", "--offset_step", "4", "--j", "2", "--random_seed", str(seed)]
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=star.parent, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    final = sorted(out.glob("run_it*_class001.mrc"))[-1]
    fit = align_maps(truth, read_map(final)[0], pixel)
    return {"wall_s": wall, "map": final.name, "flipped": bool(fit.flipped), "correlation": float(fit.correlation),
            "fsc05_vs_truth_angstrom": float(fit.fsc05_angstrom)}


def rows_of(f: dict) -> list[tuple[str, str, str]]:
    head = f"{f['structure']}, {f['n']} particles, box {f['box']} at {f['angpix']:g} Å, SNR {f['snr']:g}"
    rows = []
    for r in f["runs"]:
        rows += [(f"{head}, seed {r['seed']}: wall time, {f['iterations']} iterations (s)", f"{r['wall_s']:.0f}",
                  "< 900 (2 cores)"),
                 (f"{head}, seed {r['seed']}: peak RSS of this process so far (GiB)",
                  f"{r['peak_rss_gib_so_far']:.2f}", "—"),
                 (f"{head}, seed {r['seed']}: hand flipped / correlation", f"{r['flipped']} / {r['correlation']:.3f}",
                  "—"),
                 (f"{head}, seed {r['seed']}: FSC 0.5 vs truth after alignment (Å; Nyquist "
                  f"{f['nyquist_angstrom']:g})", f"{r['fsc05_vs_truth_angstrom']:.1f}", f"< {BAR_ANGSTROM:g}")]
        if "relion" in r:
            rel = r["relion"]
            rows += [(f"{head}, seed {r['seed']}: RELION 3.1.3 SGD wall time (s)", f"{rel['wall_s']:.0f}", "—"),
                     (f"{head}, seed {r['seed']}: RELION hand flipped / correlation",
                      f"{rel['flipped']} / {rel['correlation']:.3f}", "—"),
                     (f"{head}, seed {r['seed']}: RELION FSC 0.5 vs truth (Å)", f"{rel['fsc05_vs_truth_angstrom']:.1f}",
                      "Ember no worse")]
    rows.append((f"{head}: seeds better than {BAR_ANGSTROM:g} Å", f"{f['seeds_better_than_20A']} of {len(f['runs'])}",
                 "≥ 4 of 5"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/ember_bench_initial_model"))
    ap.add_argument("--structures", default="5a1a,6msm")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--angpix", type=float, default=None, help="default: the smallest that fits the model")
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--iter", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fixed_sampling", action="store_true", help="HEALPix order 1 throughout (no auto-sampling)")
    ap.add_argument("--no_ctf", action="store_true", help="simulate and run without a CTF (for the RELION comparison)")
    ap.add_argument("--relion", action="store_true", help="also run RELION 3.1.3's SGD initial model per seed")
    args = ap.parse_args()
    if args.relion and shutil.which("relion_refine") is None:
        raise SystemExit("--relion needs RELION 3.1.3's relion_refine on PATH (apt-get install relion)")
    figures, rows = [], []
    for name in args.structures.split(","):
        path = model_file(name.strip())
        tag = (f"{name.strip()}_n{args.n}_b{args.box}_a{args.angpix or 'auto'}_snr{args.snr:g}_it{args.iter}"
               f"{'_fixed' if args.fixed_sampling else ''}{'_noctf' if args.no_ctf else ''}")
        w = args.work / tag
        w.mkdir(parents=True, exist_ok=True)
        f = run_structure(w, path, args)
        figures.append(f)
        (w / "results.json").write_text(json.dumps(f, indent=1))
        rows += rows_of(f)
        (args.work / "results.json").write_text(json.dumps(figures, indent=1))
        print(table(rows_of(f)), flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
