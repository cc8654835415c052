#!/usr/bin/env bash
# Regenerates the relion_mask_create / relion_postprocess (RELION 3.1.3) fixtures in this folder.
# Needs `ember` and RELION 3.1.3 on PATH. Inputs: half maps of 1AKE (box 48, 2 Å/px) blurred by
# B = 150 Å² with independent white noise per half (σ = 2 × the blurred map's σ), stored as int16
# (what RELION read); outputs: RELION's mask and postprocess.star files.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
ember simulate --model ../../../../src/ember/data/1ake.cif --box 48 --angpix 2 --n 1 --seed 1 --o "$tmp/sim" -q
python - "$tmp" <<'PY'
import sys
import mrcfile
import numpy as np
tmp = sys.argv[1]
with mrcfile.open(f"{tmp}/sim/truth.mrc") as m:
    truth, a = m.data.astype(np.float64), float(m.voxel_size.x)
n, bfactor, sigma = truth.shape[0], 150.0, 2.0
k, kx = np.fft.fftfreq(n), np.fft.rfftfreq(n)
s2 = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2) / a**2  # Å⁻²
blur = np.fft.irfftn(np.fft.rfftn(truth) * np.exp(-bfactor * s2 / 4), s=truth.shape, axes=(0, 1, 2))
rng = np.random.default_rng(11)
scale = 200.0 / (sigma * blur.std())  # noise σ = 200 counts
halves = []
for half in (1, 2):
    h = np.round(scale * (blur + sigma * blur.std() * rng.standard_normal(blur.shape))).astype(np.int16)
    halves.append(h.astype(np.float32))
    with mrcfile.new(f"{tmp}/half{half}.mrc") as m:
        m.set_data(h)
        m.voxel_size = a
with mrcfile.new(f"{tmp}/average.mrc") as m:
    m.set_data((halves[0] + halves[1]) / 2)
    m.voxel_size = a
with open(f"{tmp}/mtf.star", "w") as f:  # a made-up detector MTF, 0 → Nyquist in 1/pixel
    f.write("data_\nloop_\n_rlnResolutionInversePixel #1\n_rlnMtfValue #2\n")
    for x in np.linspace(0.0, 0.5, 21):
        f.write(f"{x:.4f} {np.exp(-6.0 * x * x):.4f}\n")
PY
cd "$tmp"
mkdir -p auto mtf
relion_mask_create --i average.mrc --o mask.mrc --lowpass 14 --ini_threshold 100 --extend_inimask 3 \
    --width_soft_edge 6 >/dev/null
relion_postprocess --i half1.mrc --i2 half2.mrc --mask mask.mrc --auto_bfac --autob_lowres 10 \
    --o auto/postprocess >/dev/null 2>&1
relion_postprocess --i half1.mrc --i2 half2.mrc --mask mask.mrc --mtf mtf.star --mtf_angpix 1 \
    --adhoc_bfac -100 --o mtf/postprocess >/dev/null 2>&1
cd - >/dev/null
gzip -9n -c "$tmp/half1.mrc" > half1.mrc.gz
gzip -9n -c "$tmp/half2.mrc" > half2.mrc.gz
gzip -9n -c "$tmp/mask.mrc" > mask.mrc.gz
cp "$tmp/mtf.star" mtf.star
cp "$tmp/auto/postprocess.star" relion_postprocess_auto.star
cp "$tmp/mtf/postprocess.star" relion_postprocess_mtf.star
rm -rf "$tmp"
