#!/usr/bin/env bash
# Download the wheels that the lent GPU machine's Python (3.12, PyTorch already there) lacks into
# .whl/ (ignored by git; carried by the device tool): Ember's I/O and sampling libraries.
# Run here, once per session, before benchmarks/gpu_check.sh travels with `carry: [".whl"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for spec in mrcfile==1.5.4 starfile==0.5.13 gemmi==0.7.5 healpy==1.20.1 astropy==8.0.2 pyerfa==2.0.1.5 \
            astropy-iers-data==0.2026.11.2.0.34.55; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec"
done
ls -la .whl
