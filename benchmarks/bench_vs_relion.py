"""Issue 8 bar: the whole gold-standard auto-refinement against RELION 3.1.3 on the same cores.

Run: python -m benchmarks.bench_vs_relion [--n 2000] [--box 64] [--angpix 4]
     [--part all|ember|relion|relion_check] [--processes 1]

Data: 6MSM (CFTR, C1) simulated at SNR 0.1, defocus 1–3 µm; both programs start from the ground
truth low-pass filtered to 40 Å with the same sampling (7.5° → local from 0.9°, ±5 px in 2-px
coarse steps), particle diameter 160 Å, no norm/scale corrections. RELION runs as
`mpirun -n 3 relion_refine_mpi … --j 1` (one leader, two workers on two cores), Ember as one
process with two threads (or `torchrun` with `--processes N`). Prints the wall times, their ratio
and each map's FSC-vs-truth resolution (0.5), with the true-angle reconstruction's for reference.

`--part relion_check` asks whether this RELION build aligns CTF-modulated images at all: RELION's own
`relion_project` projections of a map (300 particles, high SNR, 1 µm defocus) aligned by one
`relion_refine` iteration (HEALPix order 2, 40 Å start), with and without the CTF; it prints the
median angular error of each against the true angles.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_refine3d import DIAMETER, pose_errors, vs_truth
from benchmarks.common import SHARED, run_ember, table


def simulate(w: Path, n: int, box: int, angpix: float) -> Path:
    star = w / "sim" / "particles.star"
    if not star.exists():
        run_ember("simulate", "--model", str(SHARED / "6msm.pdb.gz"), "--box", str(box), "--angpix", str(angpix),
                  "--n", str(n), "--snr", "0.1", "--defocus", "1", "3", "--seed", "11", "--o", str(w / "sim"), "-q")
    return star


def ember_refine(w: Path, star: Path, processes: int) -> tuple[float, Path]:
    out = w / f"ember_p{processes}"
    shutil.rmtree(out, ignore_errors=True)
    args = ["refine3d", "--i", str(star), "--ref", str(star.parent / "truth.mrc"), "--particle_diameter",
            str(DIAMETER), "--ini_high", "40", "--seed", "1", "--o", str(out), "-q"]
    if processes == 1:
        wall, _ = run_ember(*args, "--j", "2")
    else:
        start = time.perf_counter()
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        subprocess.run(launcher + ["-m", "ember", *args, "--j", str(max(1, 2 // processes))], check=True)
        wall = time.perf_counter() - start
    return wall, out / "run_class001.mrc"


def relion_refine(w: Path, star: Path) -> tuple[float, Path]:
    out = w / "relion"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3", "relion_refine_mpi", "--auto_refine",
           "--split_random_halves", "--i", str(star), "--ref", str(star.parent / "truth.mrc"), "--ini_high", "40",
           "--particle_diameter", str(DIAMETER), "--o", str(out / "run"), "--ctf", "--flatten_solvent",
           "--zero_mask", "--oversampling", "1", "--healpix_order", "2", "--auto_local_healpix_order", "4",
           "--offset_range", "5", "--offset_step", "2", "--sym", "C1", "--low_resol_join_halves", "40", "--pad", "2",
           "--j", "1", "--random_seed", "1"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=star.parent, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, out / "run_class001.mrc"


def relion_ctf_check(w: Path, box: int, angpix: float) -> list[tuple[str, str, str]]:
    """Median angular error of one relion_refine iteration on relion_project's own projections."""
    import starfile

    d = w / "relion_check"
    d.mkdir(parents=True, exist_ok=True)
    run_ember("simulate", "--model", str(SHARED / "6msm.pdb.gz"), "--box", str(box), "--angpix", str(angpix),
              "--n", "300", "--snr", "10", "--seed", "11", "--o", str(d / "sim"), "-q")
    table_ = starfile.read(d / "sim" / "particles.star")
    table_["particles"][["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]] = [10000.0, 10000.0, 0.0]
    starfile.write(table_, d / "angles.star", overwrite=True)
    rows = []
    for label, ctf in (("with the CTF (--ctf)", ["--ctf"]), ("without a CTF", [])):
        name = "ctf" if ctf else "no_ctf"
        subprocess.run(["relion_project", "--i", str(d / "sim" / "truth.mrc"), "--o", name, "--ang", "angles.star",
                        "--angpix", str(angpix), "--add_noise", "--white_noise", "0.3", *ctf],
                       check=True, cwd=d, stdout=subprocess.DEVNULL)
        (d / f"run_{name}").mkdir(exist_ok=True)
        subprocess.run(["relion_refine", "--i", f"{name}.star", "--ref", "sim/truth.mrc", "--ini_high", "40",
                        "--particle_diameter", str(DIAMETER), "--o", f"run_{name}/run", "--oversampling", "1",
                        "--healpix_order", "2", "--offset_range", "5", "--offset_step", "2", "--iter", "1", "--K", "1",
                        "--tau2_fudge", "1", "--j", "2", "--random_seed", "1", *ctf],
                       check=True, cwd=d, stdout=subprocess.DEVNULL)
        err, _ = pose_errors(d / f"run_{name}" / "run_it001_data.star", d / f"{name}.star", angpix)
        rows.append((f"relion_refine on relion_project's projections {label}: median angular error (°)",
                     f"{err:.1f}", "≤ 10 if RELION aligns"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/ember_bench_vs_relion"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--angpix", type=float, default=4.0)
    ap.add_argument("--part", choices=["all", "ember", "relion", "relion_check"], default="all")
    ap.add_argument("--processes", type=int, default=1, help="Ember processes (torchrun) on the same cores")
    args = ap.parse_args()
    w = args.work / f"n{args.n}_b{args.box}"
    w.mkdir(parents=True, exist_ok=True)
    if args.part == "relion_check":
        print(table(relion_ctf_check(w, args.box, args.angpix)))
        return
    star = simulate(w, args.n, args.box, args.angpix)
    truth = star.parent / "truth.mrc"
    rows = []
    run_ember("reconstruct", "--i", str(star), "--o", str(w / "true_angles.mrc"), "-q")
    rows.append(("true-angle reconstruction vs truth, FSC 0.5 (Å)", f"{vs_truth(w / 'true_angles.mrc', truth):.2f}",
                 "—"))
    times = {}
    if args.part in ("all", "ember"):
        times["ember"], final = ember_refine(w, star, args.processes)
        rows.append((f"Ember auto-refine wall time, {args.processes} process(es) (s)", f"{times['ember']:.0f}", "—"))
        rows.append(("Ember map vs truth, FSC 0.5 (Å)", f"{vs_truth(final, truth):.2f}", "≤ 1.1× RELION's"))
    if args.part in ("all", "relion") and shutil.which("relion_refine_mpi"):
        times["relion"], final = relion_refine(w, star)
        rows.append(("RELION 3.1.3 auto-refine wall time, mpirun -n 3 --j 1 (s)", f"{times['relion']:.0f}", "—"))
        rows.append(("RELION map vs truth, FSC 0.5 (Å)", f"{vs_truth(final, truth):.2f}", "—"))
    if len(times) == 2:
        rows.append(("Ember / RELION wall time", f"{times['ember'] / times['relion']:.2f}", "≤ 0.5"))
    print(table(rows))


if __name__ == "__main__":
    main()
