"""Issue 9 bars: 3D classification of a two-state mixture, and the same against RELION 3.1.3.

Run: python -m benchmarks.bench_class3d [--n 10000] [--box 96] [--angpix 3] [--fractions both|0.5,0.5|0.8,0.2]
     [--K 2 [4]] [--iter 25] [--part ember|relion|all] [--relion_n 2000] [--relion_iter 10] [--no_ctf]
     [--seed 1] [--gridding_iter 0] [--relion_seed 1] [--relion_extra=--skip_gridding]
     [--local 3:2:4,4:1:3] [--true_poses]

Data: 5A1A (β-galactosidase) with all four chains (state 1) and without chain D (state 2, 25 % less
mass), `ember simulate --states "A,B,C,D;A,B,C"` at SNR 0.05 (state 1's), defocus 1–3 µm, CTF on
(`--no_ctf`: off, and both programs classify without one — Debian's RELION 3.1.3 does not align CTF data).
The starting reference is the fraction-weighted mean of the two true maps (consensus.mrc), low-pass
filtered to 40 Å; `ember class3d --K K` runs through the Python API with 2 threads.

Accuracy = share of particles in their true class under the best matching of found classes to true
states: a permutation when K equals the number of states, else each class is given the state it
mostly holds (duplicates merged). Sizes are the hard assignments' shares; the FSC 0.5 resolution of
each state is that of its matched class map (the largest class mapped to it) against its own truth.

`--part relion` cuts the mixture to box 64 at 4 Å with --relion_n particles and runs both Ember
class3d (K = 2; `--part relion_only` leaves it out) and `mpirun -n 3 relion_refine_mpi --K 2 …
--norm --scale --j 1 --random_seed --relion_seed` (plus --relion_extra) on it for --relion_iter
iterations; Ember runs class3d's defaults (no --norm/--scale).

`--local ORDER:SIGMA:ITER,…` continues each Ember run as a RELION user refines classes further: one
class3d job per step with the previous job's model.star as `--ref` (one map per class, no seeds), its
data.star as `--i`, `--healpix_order ORDER --sigma_ang SIGMA` (local searches around the angles found)
and `--ini_high` at the resolution the previous job reached (its rlnCurrentResolution).
`--true_poses` also reconstructs each state from its own particles at their true poses (3D Wiener
filter, T = 1): the resolution the data allow when alignment and classification are perfect.
Figures go to the terminal and to results.json and trajectory.csv in each run's folder.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import resource
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import SHARED, run_ember, table
from ember.io.mrc import read_map, write_map
from ember.io.star import read_particles_star, read_star_blocks, write_particles_star
from ember.jobs.class3d import Class3DConfig, class3d
from ember.jobs.reconstruct import ReconstructConfig, reconstruct
from ember.jobs.select import select_particles
from ember.maths.fourier import resolution_angstrom
from ember.maths.fsc import fsc, resolution_shell

DIAMETER = 220.0  # 5A1A: bounding box 181 × 136 × 92 Å
STATES = "A,B,C,D;A,B,C"
EMBER_NOTE = "Ember runs class3d's defaults, without --norm/--scale (RELION runs with both)"


def simulate(w: Path, n: int, box: int, angpix: float, snr: float, fractions: tuple[float, ...],
             ctf: bool = True) -> Path:
    """The mixture in w/sim (CTF-modulated unless `ctf` is false) and consensus.mrc = Σ f_k · truth_k in w."""
    star = w / "sim" / "particles.star"
    if not star.exists():
        run_ember("simulate", "--model", str(SHARED / "5a1a.cif.gz"), "--states", STATES, "--fractions",
                  ",".join(f"{f:g}" for f in fractions), "--box", str(box), "--angpix", str(angpix), "--n", str(n),
                  "--snr", str(snr), "--defocus", "1", "3", "--seed", "9", "--o", str(w / "sim"), "-q",
                  *([] if ctf else ["--no-ctf"]))
    consensus = w / "consensus.mrc"
    if not consensus.exists():
        maps = [read_map(w / "sim" / f"truth_class{k + 1:03d}.mrc") for k in range(len(fractions))]
        mean = sum(f * m.astype(np.float64) for f, (m, _) in zip(fractions, maps, strict=True))
        write_map(consensus, mean.astype(np.float32), maps[0][1])
    return star


def with_offset_error(star: Path, sigma_px: float, seed: int = 7) -> Path:
    """A copy of `star` whose rlnOriginX/YAngst carry Gaussian errors of `sigma_px` pixels per axis, as a
    consensus refinement's offsets would (the simulated STAR holds the true ones)."""
    out = star.with_name(f"{star.stem}_offerr{sigma_px:g}.star")
    if not out.exists():
        table = read_particles_star(star)
        p = table.particles
        angpix = p["rlnOpticsGroup"].map(table.optics.set_index("rlnOpticsGroup")["rlnImagePixelSize"]).to_numpy()
        rng = np.random.default_rng(seed)
        for axis in ("X", "Y"):
            p[f"rlnOrigin{axis}Angst"] = p[f"rlnOrigin{axis}Angst"] + rng.normal(0.0, sigma_px, len(p)) * angpix
        write_particles_star(out, table)
    return out


def resolution_vs(map_path: Path, truth_path: Path) -> float:
    """FSC 0.5 resolution (Å) of a map against a truth map."""
    a, px = read_map(map_path)
    b, _ = read_map(truth_path)
    curve = fsc(torch.from_numpy(a).double(), torch.from_numpy(b).double())
    return resolution_angstrom(resolution_shell(curve, 0.5), a.shape[0], px)


def image_keys(names) -> list[str]:
    """'12@../sim/particles.mrcs' → '12@particles.mrcs' (the two programs write different paths)."""
    out = []
    for name in names:
        idx, path = str(name).split("@", 1)
        out.append(f"{int(idx)}@{Path(path).name}")
    return out


def true_states(star: Path) -> dict[str, int]:
    p = read_star_blocks(star)["particles"]
    return dict(zip(image_keys(p["rlnImageName"]), p["rlnClassNumber"].astype(int), strict=True))


def contingency(data_star: Path, truth: dict[str, int], k: int, s: int) -> np.ndarray:
    """C[class, state] counts (0-based) of one data.star against the true states."""
    p = read_star_blocks(data_star)["particles"]
    found = dict(zip(image_keys(p["rlnImageName"]), p["rlnClassNumber"].astype(int), strict=True))
    c = np.zeros((k, s), dtype=int)
    for key, state in truth.items():
        c[found[key] - 1, state - 1] += 1
    return c


def matching(c: np.ndarray) -> np.ndarray:
    """State (0-based) of each found class: the best permutation when K ≤ S, else the majority state."""
    k, s = c.shape
    if k <= s:
        best = max(itertools.permutations(range(s), k), key=lambda perm: sum(c[i, perm[i]] for i in range(k)))
        return np.array(best)
    return c.argmax(axis=1)


def score(c: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(accuracy, state of each class, found share of each state)."""
    state_of = matching(c)
    n = c.sum()
    acc = sum(c[i, state_of[i]] for i in range(c.shape[0])) / n
    sizes = np.array([c[state_of == s].sum() / n for s in range(c.shape[1])])
    return float(acc), state_of, sizes


def iteration_times(folder: Path, start: float, iterations: int) -> list[float]:
    """Seconds per iteration from the data.star modification times (start: epoch of the launch)."""
    stamps = [start] + [(folder / f"run_it{i:03d}_data.star").stat().st_mtime for i in range(1, iterations + 1)]
    return [b - a for a, b in itertools.pairwise(stamps)]


def evaluate(folder: Path, sim: Path, n_classes: int, iterations: int, fractions: tuple[float, ...]) -> dict:
    """Accuracy per iteration, and at the last: sizes, π_k and each state's matched map vs its truth."""
    truth = true_states(sim / "particles.star")
    s = len(fractions)
    trajectory = []
    for it in range(1, iterations + 1):
        data = folder / f"run_it{it:03d}_data.star"
        if data.exists():
            acc, _, sizes = score(contingency(data, truth, n_classes, s))
            trajectory.append({"iteration": it, "accuracy": acc, **{f"size_state{j + 1}": x for j, x in
                                                                     enumerate(sizes)}})
    c = contingency(folder / f"run_it{iterations:03d}_data.star", truth, n_classes, s)
    acc, state_of, sizes = score(c)
    model = read_star_blocks(folder / f"run_it{iterations:03d}_model.star")
    pi = model["model_classes"]["rlnClassDistribution"].astype(float).to_numpy()
    res = []
    for j in range(s):
        mine = np.flatnonzero(state_of == j)
        if len(mine) == 0:
            res.append(None)
            continue
        k = int(mine[np.argmax(c[mine].sum(axis=1))])
        res.append(resolution_vs(folder / f"run_it{iterations:03d}_class{k + 1:03d}.mrc",
                                 sim / f"truth_class{j + 1:03d}.mrc"))
    return {"accuracy": acc, "contingency": c.tolist(), "state_of_class": (state_of + 1).tolist(),
            "sizes": sizes.tolist(), "true_sizes": list(fractions), "class_distribution": pi.tolist(),
            "fsc05_vs_truth_angstrom": res, "trajectory": trajectory}


def write_figures(folder: Path, figures: dict) -> None:
    (folder / "results.json").write_text(json.dumps(figures, indent=1))
    rows = figures["trajectory"]
    if rows:
        with open(folder / "trajectory.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) + ["seconds"])
            writer.writeheader()
            for row, sec in zip(rows, figures.get("seconds_per_iteration", [None] * len(rows)), strict=False):
                writer.writerow({**row, "seconds": sec})


def ember_class3d(w: Path, star: Path, n_classes: int, iterations: int, fractions: tuple[float, ...],
                  healpix_order: int, ctf: bool = True, seed: int = 1, gridding_iterations: int = 0,
                  suffix: str = "", input_prior_angstrom: float = 0.0) -> dict:
    """Ember's class3d with 2 threads; `gridding_iterations` > 0: RELION 3.1's iterative gridding;
    `input_prior_angstrom` > 0: --input_offset_prior --offset σ --fix_sigma_offset."""
    tag = (("" if seed == 1 else f"_s{seed}") + (f"_grid{gridding_iterations}" if gridding_iterations else "")
           + (f"_inprior{input_prior_angstrom:g}" if input_prior_angstrom else "") + suffix)
    prior = dict(input_offset_prior=True, sigma_offset_angstrom=input_prior_angstrom,
                 fix_sigma_offset=True) if input_prior_angstrom else {}
    out = w / f"ember_K{n_classes}{tag}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = Class3DConfig(star=star, reference=w / "consensus.mrc", output=out, n_classes=n_classes,
                        particle_diameter_angstrom=DIAMETER, ini_high_angstrom=40.0, iterations=iterations,
                        healpix_order=healpix_order, ctf=ctf, threads=2, seed=seed,
                        gridding_iterations=gridding_iterations, **prior)
    epoch, t0 = time.time(), time.perf_counter()
    class3d(cfg)
    wall = time.perf_counter() - t0
    n = sum(1 for _ in true_states(star))
    figures = {"program": "ember", "folder": str(out), "K": n_classes, "n": n, "iterations": iterations, "wall_s": wall,
               "seconds_per_iteration": iteration_times(out, epoch, iterations),
               "particles_per_s": n * iterations / wall,
               "peak_rss_gib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               **evaluate(out, star.parent, n_classes, iterations, fractions)}
    write_figures(out, figures)
    return figures


def parse_local(text: str) -> list[tuple[int, float, int]]:
    """'3:2:4,4:1:3' → [(healpix_order, sigma_ang_deg, iterations), …]."""
    steps = []
    for part in filter(None, text.split(",")):
        order, sigma, iterations = part.split(":")
        steps.append((int(order), float(sigma), int(iterations)))
    return steps


def local_steps(first: Path, first_iterations: int, steps: list[tuple[int, float, int]],
                fractions: tuple[float, ...], ctf: bool, seed: int) -> list[tuple[str, dict]]:
    """Continue a class3d run with local searches, one class3d job per step (see the module text);
    every other setting at class3d's defaults (not --gridding_iter's or --ember_input_prior's)."""
    sim, prev, prev_it, out = first.parent / "sim", first, first_iterations, []
    for order, sigma, iterations in steps:
        model = prev / f"run_it{prev_it:03d}_model.star"
        blocks = read_star_blocks(model)
        ini_high = float(np.asarray(blocks["model_general"]["rlnCurrentResolution"], dtype=float).ravel()[0])
        folder = prev.parent / f"{prev.name}_local{order}s{sigma:g}"
        shutil.rmtree(folder, ignore_errors=True)
        n_classes = len(blocks["model_classes"])
        t0 = time.perf_counter()
        class3d(Class3DConfig(star=prev / f"run_it{prev_it:03d}_data.star", reference=model, output=folder,
                              n_classes=None, particle_diameter_angstrom=DIAMETER, ini_high_angstrom=ini_high,
                              iterations=iterations, healpix_order=order, sigma_ang_deg=sigma, ctf=ctf, threads=2,
                              seed=seed))
        wall = time.perf_counter() - t0
        figures = {"wall_s": wall, "iterations": iterations, **evaluate(folder, sim, n_classes, iterations, fractions)}
        write_figures(folder, figures)
        out.append((f"then --healpix_order {order} --sigma_ang {sigma:g} --iter {iterations} --ini_high {ini_high:.1f}",
                    figures))
        prev, prev_it = folder, iterations
    return out


def local_rows(label: str, f: dict) -> list[tuple[str, str, str]]:
    sizes = ", ".join(f"{100 * a:.1f} %" for a in f["sizes"])
    res = ", ".join("—" if r is None else f"{r:.2f}" for r in f["fsc05_vs_truth_angstrom"])
    return [(f"{label}: wall time (s)", f"{f['wall_s']:.0f}", "—"),
            (f"{label}: accuracy", f"{f['accuracy']:.3f}", "≥ 0.95"),
            (f"{label}: class sizes, states 1 / 2", sizes, "within 3 pt"),
            (f"{label}: matched class map vs own truth, FSC 0.5, states 1 / 2 (Å)", res, "< 12")]


def true_pose_resolutions(w: Path, n_states: int) -> list[float]:
    """FSC 0.5 resolution (Å) vs its truth of each state reconstructed from its own particles at their
    true poses (3D Wiener filter from the halves, T = 1)."""
    out = []
    for k in range(1, n_states + 1):
        selected = w / "true_poses" / f"state{k}.star"
        selected.parent.mkdir(exist_ok=True)
        select_particles(w / "sim" / "particles.star", selected, classes=[k])
        reconstruct(ReconstructConfig(star=selected, output=selected.with_suffix(".mrc"), wiener=True))
        out.append(resolution_vs(selected.with_suffix(".mrc"), w / "sim" / f"truth_class{k:03d}.mrc"))
    return out


def relion_class3d(w: Path, star: Path, iterations: int, fractions: tuple[float, ...], healpix_order: int,
                   ctf: bool = True, seed: int = 1, extra: tuple[str, ...] = (), suffix: str = "") -> dict:
    """`mpirun -n 3 relion_refine_mpi --K 2 …` with `--random_seed seed` and `extra` arguments appended."""
    tag = "".join(f"_{a.lstrip('-')}" for a in extra) + suffix
    out = w / ("relion" if seed == 1 and not tag else f"relion_s{seed}{tag}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3", "relion_refine_mpi", "--i", str(star),
           "--ref", str(w / "consensus.mrc"), "--K", "2", "--iter", str(iterations), "--tau2_fudge", "4",
           "--ini_high", "40", "--particle_diameter", str(DIAMETER), *(["--ctf"] if ctf else []),
           "--flatten_solvent", "--zero_mask", "--oversampling", "1", "--healpix_order", str(healpix_order),
           "--offset_range", "5", "--offset_step", "2", "--sym", "C1", "--norm", "--scale", "--pad", "2", "--j", "1",
           "--random_seed", str(seed), *extra, "--o", str(out / "run")]
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    epoch, t0 = time.time(), time.perf_counter()
    subprocess.run(cmd, check=True, cwd=star.parent, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    n = sum(1 for _ in true_states(star))
    figures = {"program": "relion 3.1.3 (mpirun -n 3, --j 1)", "K": 2, "n": n, "iterations": iterations,
               "wall_s": wall, "seconds_per_iteration": iteration_times(out, epoch, iterations),
               "particles_per_s": n * iterations / wall,
               **evaluate(out, star.parent, 2, iterations, fractions)}
    write_figures(out, figures)
    return figures


def rows_of(f: dict, label: str, truth_res: float) -> list[tuple[str, str, str]]:
    acc_bar = "≥ 0.95"
    sizes = ", ".join(f"{100 * a:.1f} % (true {100 * b:.0f} %, {100 * (a - b):+.1f} pt)"
                      for a, b in zip(f["sizes"], f["true_sizes"], strict=True))
    res = ", ".join("—" if r is None else f"{r:.2f}" for r in f["fsc05_vs_truth_angstrom"])
    spi = f["seconds_per_iteration"]
    rss = f"{f['peak_rss_gib_so_far']:.2f}" if "peak_rss_gib_so_far" in f else \
        "— (RUSAGE_CHILDREN would report this process's size at the fork)"
    return [
        (f"{label}: wall time, {f['iterations']} iterations (s)", f"{f['wall_s']:.0f}", "—"),
        (f"{label}: seconds per iteration (first / median of the rest)",
         f"{spi[0]:.0f} / {np.median(spi[1:]) if len(spi) > 1 else float('nan'):.0f}", "—"),
        (f"{label}: particles per second (× iterations / wall)", f"{f['particles_per_s']:.1f}", "—"),
        (f"{label}: peak RSS of this process so far (GiB)", rss, "—"),
        (f"{label}: accuracy (best matching; classes → states {f['state_of_class']})", f"{f['accuracy']:.3f}",
         acc_bar),
        (f"{label}: class sizes, states 1 / 2", sizes, "within 3 pt"),
        (f"{label}: π_k (rlnClassDistribution)", ", ".join(f"{100 * x:.1f} %" for x in f["class_distribution"]),
         "—"),
        (f"{label}: matched class map vs own truth, FSC 0.5, states 1 / 2 (Å)", res,
         f"< 12 (true maps vs each other: {truth_res:.2f})"),
        (f"{label}: accuracy per iteration", " ".join(f"{t['accuracy']:.2f}" for t in f["trajectory"]), "—"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/ember_bench_class3d"))
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--angpix", type=float, default=3.0)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--fractions", default="both", help="'both' (0.5,0.5 then 0.8,0.2) or e.g. 0.8,0.2")
    ap.add_argument("--K", type=int, nargs="+", default=[2], help="class counts to run, e.g. --K 2 4")
    ap.add_argument("--iter", type=int, default=25)
    ap.add_argument("--healpix_order", type=int, default=2)
    ap.add_argument("--no_ctf", action="store_true",
                    help="simulate and classify without a CTF (Debian's RELION 3.1.3 does not align CTF data)")
    ap.add_argument("--part", choices=["all", "ember", "relion", "relion_only"], default="ember")
    ap.add_argument("--relion_n", type=int, default=2000)
    ap.add_argument("--relion_box", type=int, default=64)
    ap.add_argument("--relion_angpix", type=float, default=4.0)
    ap.add_argument("--relion_iter", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1, help="Ember's --seed")
    ap.add_argument("--gridding_iter", type=int, default=0,
                    help="Ember with RELION 3.1's iterative gridding (e.g. 10; 0 = RELION 5's default, none)")
    ap.add_argument("--relion_seed", type=int, default=1)
    ap.add_argument("--relion_extra", default="",
                    help="more relion_refine arguments, e.g. --relion_extra=--skip_gridding")
    ap.add_argument("--offset_error", type=float, default=0.0,
                    help="Gaussian error (pixels per axis) added to the STAR's true offsets before both programs "
                         "run, as a consensus refinement would leave them (0: the true offsets)")
    ap.add_argument("--local", default="", metavar="ORDER:SIGMA:ITER,…",
                    help="continue each Ember run with local searches, one class3d job per step, e.g. 3:2:4,4:1:3")
    ap.add_argument("--true_poses", action="store_true",
                    help="also reconstruct each state from its particles at their true poses (Wiener, T = 1)")
    ap.add_argument("--ember_input_prior", type=float, default=0.0, metavar="SIGMA",
                    help="Ember with --input_offset_prior --offset SIGMA --fix_sigma_offset: the translation prior "
                         "on the STAR's offsets, σ in Å (0: class3d's default prior)")
    args = ap.parse_args()
    suffix = f"_offerr{args.offset_error:g}" if args.offset_error else ""
    err = f", offsets ± {args.offset_error:g} px" if args.offset_error else ""
    mixes = [(0.5, 0.5), (0.8, 0.2)] if args.fractions == "both" else \
        [tuple(float(x) for x in args.fractions.split(","))]
    rows: list[tuple[str, str, str]] = []
    done: set[tuple] = set()
    for fractions in mixes:
        tag = "f" + "-".join(f"{f:g}" for f in fractions)
        jobs = []
        if args.part in ("all", "ember"):
            jobs.append((args.n, args.box, args.angpix, args.iter, args.K, False))
        if args.part in ("all", "relion", "relion_only"):
            ks = [] if args.part == "relion_only" else [2]
            jobs.append((args.relion_n, args.relion_box, args.relion_angpix, args.relion_iter, ks, True))
        for n, box, angpix, iterations, ks, with_relion in jobs:
            w = args.work / f"n{n}_b{box}_a{angpix:g}_snr{args.snr:g}{'_noctf' if args.no_ctf else ''}" / tag
            w.mkdir(parents=True, exist_ok=True)
            star = simulate(w, n, box, angpix, args.snr, fractions, not args.no_ctf)
            if args.offset_error:
                star = with_offset_error(star, args.offset_error)
            truth_res = resolution_vs(w / "sim" / "truth_class001.mrc", w / "sim" / "truth_class002.mrc")
            head = f"{tag}, {n} particles, box {box} at {angpix:g} Å"
            for k in ks:
                if (w, k, iterations) in done:  # --part all with the same cut: Ember ran on it already
                    continue
                done.add((w, k, iterations))
                f = ember_class3d(w, star, k, iterations, fractions, args.healpix_order, not args.no_ctf,
                                  args.seed, args.gridding_iter, suffix, args.ember_input_prior)
                grid = f", gridding {args.gridding_iter}" if args.gridding_iter else ""
                if args.ember_input_prior:
                    grid += f", prior on the input offsets σ {args.ember_input_prior:g} Å fixed"
                rows += rows_of(f, f"{head}, Ember K={k} (seed {args.seed}{grid}{err})", truth_res)
                print(table(rows[-9:]), flush=True)
                for label, g in local_steps(Path(f["folder"]), iterations, parse_local(args.local), fractions,
                                            not args.no_ctf, args.seed):
                    rows += local_rows(f"{head}, Ember K={k}, {label}", g)
                    print(table(rows[-4:]), flush=True)
            if args.true_poses:
                res = ", ".join(f"{r:.2f}" for r in true_pose_resolutions(w, len(fractions)))
                rows.append((f"{head}: each state from its own particles at their true poses (Wiener, T = 1), "
                             "FSC 0.5 vs truth (Å)", res, "—"))
            if with_relion:
                if shutil.which("relion_refine_mpi") is None:
                    rows.append((f"{head}, RELION", "not installed", "—"))
                    continue
                extra = tuple(shlex.split(args.relion_extra))
                f = relion_class3d(w, star, iterations, fractions, args.healpix_order, not args.no_ctf,
                                   args.relion_seed, extra, suffix)
                rows += rows_of(f, f"{head}, RELION 3.1.3 K=2 (--norm --scale {' '.join(extra)}, seed "
                                   f"{args.relion_seed}{err})", truth_res)
                print(table(rows[-9:]), flush=True)
    print()
    print(EMBER_NOTE)
    print(table(rows))


if __name__ == "__main__":
    main()
