#!/usr/bin/env bash
# Regenerates the RELION 3.1.3 oracle fixtures in this folder (apt-get install relion).
# Ember's side is re-simulated by the tests with the same settings (seed 7), so only RELION's
# outputs are committed.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
ember simulate --model ../../../src/ember/data/1ake.cif --box 32 --angpix 2.5 --n 400 \
    --defocus 0.8 2.0 --max-offset 2 --seed 7 --o "$tmp" -q
relion_project --i "$tmp/truth.mrc" --ang "$tmp/particles.star" --ctf --o "$tmp/proj" >/dev/null
python - "$tmp" <<'PY'
import sys, mrcfile, numpy as np
tmp = sys.argv[1]
with mrcfile.open(f"{tmp}/proj.mrcs") as m:
    data = m.data[:16].astype(np.float32)
with mrcfile.new("relion_project_16.mrcs", overwrite=True) as out:
    out.set_data(data); out.set_image_stack(); out.voxel_size = 2.5
PY
(cd "$tmp" && relion_reconstruct --i particles.star --o relion_rec.mrc --ctf --angpix 2.5 >/dev/null)
cp "$tmp/relion_rec.mrc" relion_reconstruct_ctf.mrc
(cd "$tmp" && relion_reconstruct --i particles.star --o relion_rec_d7.mrc --sym D7 --angpix 2.5 >/dev/null)
python - "$tmp" <<'PY'
import sys, mrcfile, numpy as np
with mrcfile.open(f"{sys.argv[1]}/relion_rec_d7.mrc") as m:
    print("d7 map", m.data.shape)
PY
cp "$tmp/relion_rec_d7.mrc" relion_reconstruct_d7_noctf.mrc
# --ini_high 15 Å at box 32, 2.5 Å/px: the filter's edge is at 5.33 shells, not a whole shell.
mkdir "$tmp/refine"
(cd "$tmp" && relion_refine --i particles.star --ref "$OLDPWD/relion_reconstruct_ctf.mrc" --ini_high 15 \
    --iter 0 --K 1 --particle_diameter 60 --healpix_order 1 --pad 2 --j 1 --random_seed 1 \
    --o refine/run >/dev/null)
cp "$tmp/refine/run_it000_class001.mrc" relion_refine_it000_ini_high15.mrc
rm -rf "$tmp"
