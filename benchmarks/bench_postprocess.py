"""Issue 11 bar: `ember postprocess` against RELION 3.1.3's `relion_postprocess` on the same half maps
and mask: final resolution within 5 %, automatic B-factor within 15 %, corrected FSC within 0.05 at
every shell.

Run: python -m benchmarks.bench_postprocess [--box 128] [--angpix 1.5] [--bfactor 100] [--noise 3]

Data: 6MSM (CFTR) density at box 128, 1.5 Å/px, blurred by B = 100 Å², plus independent white noise
per half (σ = `--noise` × the blurred map's σ). Mask: `relion_mask_create` on the average of the
halves (low-pass 15 Å, level enclosing the volume of the truth above 10 % of its maximum, extend 3,
soft edge 6 px), compared with `ember mask` with the same options. Both programs get that mask:
`relion_postprocess --auto_bfac --autob_lowres 10`, and `ember postprocess` with seed 0 (RELION's
random phases) and seed 2 (other phases: the statistical comparison); RELION is also run with
`--random_seed 2`, to show how much its own results move with the random phases.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import starfile
import torch

from benchmarks.common import SHARED, run_ember, table
from ember.io.atomic_model import model_density, read_model
from ember.io.mrc import read_map, write_map
from ember.jobs.mask import threshold_for_volume
from ember.operators.filters import lowpass_raised_cosine


def make_halves(w: Path, box: int, angpix: float, bfactor: float, noise: float) -> float:
    """Write half1.mrc, half2.mrc, average.mrc into w → the enclosed volume (Å³) for the mask."""
    truth = model_density(read_model(SHARED / "6msm.pdb.gz"), box=box, pixel_size=angpix).astype(np.float64)
    k, kx = np.fft.fftfreq(box), np.fft.rfftfreq(box)
    s2 = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2) / angpix**2  # Å⁻²
    blur = np.fft.irfftn(np.fft.rfftn(truth) * np.exp(-bfactor * s2 / 4), s=truth.shape, axes=(0, 1, 2))
    rng = np.random.default_rng(11)
    halves = [(blur + noise * blur.std() * rng.standard_normal(blur.shape)).astype(np.float32) for _ in range(2)]
    for i, h in enumerate(halves, 1):
        write_map(w / f"half{i}.mrc", h, angpix)
    write_map(w / "average.mrc", (halves[0] + halves[1]) / 2, angpix)
    return float((truth > 0.1 * truth.max()).sum()) * angpix**3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/ember_bench_postprocess"))
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--angpix", type=float, default=1.5)
    ap.add_argument("--bfactor", type=float, default=100.0, help="blur applied to the truth (Å²)")
    ap.add_argument("--noise", type=float, default=3.0, help="noise σ per half / blurred map σ")
    args = ap.parse_args()
    w = args.work / f"b{args.box}_a{args.angpix}_B{args.bfactor:g}_n{args.noise:g}"
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    enclosed = make_halves(w, args.box, args.angpix, args.bfactor, args.noise)
    average, _ = read_map(w / "average.mrc")
    shell = int(args.box * args.angpix / 15 + 0.5)  # the level is taken on the 15 Å low-passed average
    smooth = lowpass_raised_cosine(torch.from_numpy(average).double(), shell).numpy()
    level = threshold_for_volume(smooth, enclosed, args.angpix)
    opts = ["--lowpass", "15", "--ini_threshold", f"{level:.6f}", "--extend_inimask", "3", "--width_soft_edge", "6"]
    t0 = time.perf_counter()
    subprocess.run(["relion_mask_create", "--i", "average.mrc", "--o", "mask.mrc", *opts], cwd=w, check=True,
                   capture_output=True)
    t_relion_mask = time.perf_counter() - t0
    t_ember_mask, _ = run_ember("mask", "--i", str(w / "average.mrc"), "--o", str(w / "mask_ember.mrc"), *opts)
    mask_relion, _ = read_map(w / "mask.mrc")
    mask_ember, _ = read_map(w / "mask_ember.mrc")

    t_relion = 0.0
    for seed in (0, 2):
        (w / f"relion_seed{seed}").mkdir()
        t0 = time.perf_counter()
        subprocess.run(["relion_postprocess", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc",
                        "--auto_bfac", "--autob_lowres", "10", "--random_seed", str(seed),
                        "--o", f"relion_seed{seed}/postprocess"], cwd=w, check=False, capture_output=True)
        t_relion = t_relion or time.perf_counter() - t0
    ref = starfile.read(w / "relion_seed0" / "postprocess.star", always_dict=True)
    ref2 = starfile.read(w / "relion_seed2" / "postprocess.star", always_dict=True)
    res_ref = float(ref["general"]["rlnFinalResolution"])
    b_ref = float(ref["general"]["rlnBfactorUsedForSharpening"])
    fsc_ref = ref["fsc"]["rlnFourierShellCorrelationCorrected"].to_numpy()

    rows = [
        ("mask: relion_mask_create vs ember mask, largest difference", f"{np.abs(mask_relion - mask_ember).max():.2g}",
         "—"),
        ("mask: voxels > 0.5 (fraction of the box)", f"{(mask_relion > 0.5).mean():.3f}", "—"),
        ("mask wall time, RELION / Ember (s)", f"{t_relion_mask:.1f} / {t_ember_mask:.1f}", "—"),
        ("RELION (--random_seed 0) final resolution (Å) / B-factor (Å²)", f"{res_ref:.3f} / {b_ref:.1f}", "—"),
        ("RELION --random_seed 2: final resolution (Å) / B-factor (Å²)",
         f"{float(ref2['general']['rlnFinalResolution']):.3f} / "
         f"{float(ref2['general']['rlnBfactorUsedForSharpening']):.1f}", "—"),
        ("relion_postprocess wall time (s)", f"{t_relion:.1f}", "—"),
    ]
    for seed in (0, 2):  # glibc: srand(0) = srand(1), so 2 is the first other sequence
        out = w / f"ember_seed{seed}"
        t, rss = run_ember("postprocess", "--half1", str(w / "half1.mrc"), "--half2", str(w / "half2.mrc"), "--mask",
                           str(w / "mask.mrc"), "--o", str(out), "--seed", str(seed))
        ours = starfile.read(out / "postprocess.star", always_dict=True)
        res = float(ours["general"]["rlnFinalResolution"])
        b = float(ours["general"]["rlnBfactorUsedForSharpening"])
        dfsc = np.abs(ours["fsc"]["rlnFourierShellCorrelationCorrected"].to_numpy() - fsc_ref).max()
        same_seed = ref if seed == 0 else ref2
        dfsc_same = np.abs(ours["fsc"]["rlnFourierShellCorrelationCorrected"].to_numpy()
                           - same_seed["fsc"]["rlnFourierShellCorrelationCorrected"].to_numpy()).max()
        label = "RELION's phases" if seed == 0 else "other phases"
        rows += [
            (f"Ember seed {seed} ({label}): final resolution (Å)", f"{res:.3f} ({res / res_ref - 1:+.1%})",
             "within 5 %"),
            (f"Ember seed {seed}: B-factor (Å²)", f"{b:.1f} ({b / b_ref - 1:+.1%})", "within 15 %"),
            (f"Ember seed {seed}: corrected FSC, largest difference from RELION's (seed 0)", f"{dfsc:.2g}", "< 0.05"),
            (f"Ember seed {seed}: same, from RELION --random_seed {seed}", f"{dfsc_same:.2g}", "—"),
            (f"Ember seed {seed}: wall time (s) / peak RSS (GiB)", f"{t:.1f} / {rss:.2f}", "—"),
        ]
    print(f"box {args.box}, {args.angpix} Å/px, blur B = {args.bfactor:g} Å², noise {args.noise:g} × signal σ, "
          f"randomised from {float(ref['general']['rlnRandomiseFrom']):.2f} Å")
    print(table(rows))


if __name__ == "__main__":
    main()
