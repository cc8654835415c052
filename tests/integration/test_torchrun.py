"""More than one process: `torchrun --nproc_per_node 2` (gloo on CPU) gives the one-process result."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from ember.io.mrc import read_map
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.fsc import fsc

MODEL = Path(__file__).parents[2] / "src" / "ember" / "data" / "1ake.cif"


def _refine(star: Path, out: Path, processes: int) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    args = ["-m", "ember", "refine3d", "--i", str(star), "--ref", str(star.parent / "truth.mrc"),
            "--particle_diameter", "65", "--ini_high", "15", "--healpix_order", "1", "--auto_local_healpix_order", "3",
            "--iter", "3", "--seed", "3", "--o", str(out), "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = launcher + args if processes > 1 else [sys.executable] + args
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_give_the_one_process_refinement(tmp_path):
    star = simulate(SimulateConfig(output=tmp_path / "sim", n_particles=300, model_path=MODEL, box=32, pixel_size=2.5,
                                   snr=0.2, seed=1))
    _refine(star, tmp_path / "one", 1)
    _refine(star, tmp_path / "two", 2)
    one = torch.from_numpy(read_map(tmp_path / "one" / "run_class001.mrc")[0]).double()
    two = torch.from_numpy(read_map(tmp_path / "two" / "run_class001.mrc")[0]).double()
    assert float(fsc(one, two)[1:].min()) > 0.999
    assert float((one - two).norm() / one.norm()) < 1e-3
    a = starfile.read(tmp_path / "one" / "run_data.star")["particles"]
    b = starfile.read(tmp_path / "two" / "run_data.star")["particles"]
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        assert np.mean(np.isclose(a[col], b[col], atol=1e-3)) > 0.99, col
    np.testing.assert_allclose(a["rlnMaxValueProbDistribution"], b["rlnMaxValueProbDistribution"], atol=1e-3)
