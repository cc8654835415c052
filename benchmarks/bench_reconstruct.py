"""Issue 3 bars: reconstruction accuracy from true angles, symmetry, speed and memory.

Run: python benchmarks/bench_reconstruct.py [--work /tmp/ember_bench] [--n 5000]
Simulates 6MSM (CFTR, C1) at box 128 / 1.5 Å, noise-free and SNR 0.05, reconstructs from the true
angles and prints FSC-against-truth resolutions; builds a D7 test object (14 copies of 1AKE chain
A on a D7 double ring) and compares D7 from 1/14 of the views with C1 from all views; times
reconstruction of 10,000 particles and projection of 10,000 orientations at box 128.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gemmi
import numpy as np
import torch

from benchmarks.common import SHARED, run_ember, table
from ember.io.mrc import read_map, write_map
from ember.jobs.fsc import fsc_of_maps
from ember.maths.rotations import random_rotations
from ember.maths.symmetry import symmetry_operators
from ember.operators.projector import Projector


def d7_ring_map(path: Path, box: int = 96, pixel: float = 2.0) -> None:
    """A GroEL-like D7 object: 1AKE chain A copied by the 14 D7 operators (RELION axes) after
    moving it 32 Å off the 7-fold axis and 24 Å above the equator."""
    from ember.io.atomic_model import model_density, read_model

    st = read_model(Path(__file__).parents[1] / "src/ember/data/1ake.cif", ["A"])
    pos = np.array([a.pos.tolist() for ch in st[0] for r in ch for a in r])
    st[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*(np.array([32.0, 0, 24]) - pos.mean(0)))))
    ring = gemmi.Structure()
    model = gemmi.Model("1")
    for k, op in enumerate(symmetry_operators("D7").numpy()):
        ch = st[0]["A"].clone()
        ch.name = chr(ord("A") + k)
        for res in ch:
            for atom in res:
                atom.pos = gemmi.Position(*(op @ np.array(atom.pos.tolist())))
        model.add_chain(ch)
    ring.add_model(model)
    # the density is centred on the centroid, which is the origin of the D7 axes by construction
    write_map(path, model_density(ring, box=box, pixel_size=pixel), pixel)


def resolution_vs_truth(rec: Path, truth: Path) -> tuple[float, float, float]:
    a, pixel = read_map(rec)
    b, _ = read_map(truth)
    r = fsc_of_maps(a, b, pixel)
    return r.resolution_05, r.resolution_0143, pixel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/ember_bench_reconstruct"))
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    rows = []
    model = str(SHARED / "6msm.pdb.gz")
    common = ["--model", model, "--box", "128", "--angpix", "1.5", "--defocus", "1", "3", "--seed", "1", "-q"]

    # speed first, so that its peak memory is the largest child so far
    run_ember("simulate", *common, "--n", "10000", "--snr", "0.05", "--o", str(w / "sim10k"))
    t, peak = run_ember(
        "reconstruct", "--i", str(w / "sim10k/particles.star"), "--o", str(w / "rec10k.mrc"), "--j", "2", "-q"
    )
    rows.append(("reconstruct 10,000 particles, box 128, 2 threads (s)", f"{t:.1f}", "< 60"))
    rows.append(("  peak memory of that process (GiB)", f"{peak:.2f}", "—"))
    torch.set_num_threads(2)
    vol, _ = read_map(w / "sim10k/truth.mrc")
    start = time.perf_counter()
    proj = Projector.from_volume(torch.from_numpy(vol))
    proj.project(random_rotations(10000, torch.Generator().manual_seed(0)).float())
    rows.append(
        ("project 10,000 orientations of 128³ incl. preparation (s)", f"{time.perf_counter() - start:.1f}", "< 20")
    )

    run_ember("simulate", *common, "--n", str(args.n), "--o", str(w / "clean"))
    run_ember("reconstruct", "--i", str(w / "clean/particles.star"), "--o", str(w / "clean.mrc"), "-q")
    r05, r0143, px = resolution_vs_truth(w / "clean.mrc", w / "clean/truth.mrc")
    rows.append(
        (
            f"noise-free 6MSM, {args.n} particles, C1: FSC 0.5 vs truth (Å / px)",
            f"{r05:.2f} / {r05 / px:.2f}",
            "< 2.3 px",
        )
    )

    run_ember("simulate", *common, "--n", str(args.n), "--snr", "0.05", "--o", str(w / "noisy"))
    for name, extra in (("plain", []), ("wiener", ["--wiener"])):
        run_ember(
            "reconstruct", "--i", str(w / "noisy/particles.star"), "--o", str(w / f"noisy_{name}.mrc"), "-q", *extra
        )
        r05, r0143, px = resolution_vs_truth(w / f"noisy_{name}.mrc", w / "noisy/truth.mrc")
        rows.append(
            (
                f"SNR 0.05, {name}: FSC vs truth 0.5 / 0.143 (Å)",
                f"{r05:.2f} / {r0143:.2f}",
                "0.143 < 4 px" + f" (= {4 * px:.1f} Å)",
            )
        )

    d7_ring_map(w / "d7_truth.mrc")
    d7 = ["--map", str(w / "d7_truth.mrc"), "--defocus", "1", "3", "--seed", "2", "-q"]
    run_ember("simulate", *d7, "--n", "7000", "--o", str(w / "d7_all"))
    run_ember("simulate", *d7, "--n", "500", "--o", str(w / "d7_part"))
    run_ember("reconstruct", "--i", str(w / "d7_all/particles.star"), "--o", str(w / "d7_c1.mrc"), "-q")
    run_ember("reconstruct", "--i", str(w / "d7_part/particles.star"), "--o", str(w / "d7_d7.mrc"), "--sym", "D7", "-q")
    a, pixel = read_map(w / "d7_c1.mrc")
    b, _ = read_map(w / "d7_d7.mrc")
    curve = fsc_of_maps(a, b, pixel).curve
    half = len(curve) // 2
    rows.append(
        ("D7 from 500 views vs C1 from 7,000: min FSC up to half Nyquist", f"{curve[: half + 1].min():.3f}", "> 0.95")
    )
    print(table(rows))


if __name__ == "__main__":
    main()
