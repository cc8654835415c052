#!/usr/bin/env bash
# The prepared check for a lent GPU machine (issue 8): one call of the device tool, about 9 minutes.
#   here, first:  bash benchmarks/gpu_wheels.sh   (wheels the machine lacks → .whl/)
#                 mkdir -p .gpu && cp ../shared/data/structures/6msm.pdb.gz .gpu/   (and /.gpu/ in .git/info/exclude)
#   device run:   command "bash benchmarks/gpu_check.sh", carry [".whl", ".gpu"], timeout_s 600
# It runs the CUDA tests (E-step and refine3d on the GPU against the CPU), then on 10,000 simulated
# 6MSM particles (box 128, 2 Å/px) one iteration at 7.5° with the cross-term GEMM rate against a
# plain matmul of the same shape, and the first iteration from 40 Å with its stages. Logs → $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ember_gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 EMBER_STRUCTURES=$PWD/.gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -rs -k cuda tests/inference/test_device.py tests/jobs/test_device_jobs.py 2>&1 \
  | tee "$OUT/tests.log"
W=/tmp/ember_bench_gpu
timeout 200 python3 -m benchmarks.bench_refine3d --part speed --n 10000 --box 128 --device cuda --threads 16 \
  --work $W 2>&1 | tee "$OUT/speed.log"
timeout 150 python3 -m benchmarks.bench_refine3d --part first --n 10000 --box 128 --device cuda --threads 16 \
  --work $W 2>&1 | tee "$OUT/first.log"
