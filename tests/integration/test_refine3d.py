"""End-to-end gold-standard refinement on a small simulated data set (box 32, 600 particles)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from ember.io.mrc import read_map
from ember.io.star import read_particles_star
from ember.jobs.refine3d import Refine3DConfig, refine3d
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.fsc import fsc, resolution_shell
from ember.maths.rotations import angular_distance_deg, euler_to_matrix

MODEL = Path(__file__).parents[2] / "src" / "ember" / "data" / "1ake.cif"


def config(star: Path, out: Path, **kw) -> Refine3DConfig:
    base = dict(star=star, reference=star.parent / "truth.mrc", output=out, particle_diameter_angstrom=65.0,
                ini_high_angstrom=15.0, healpix_order=1, auto_local_healpix_order=3, max_iterations=12, seed=3)
    base.update(kw)
    return Refine3DConfig(**base)


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    star = simulate(SimulateConfig(output=root / "sim", n_particles=600, model_path=MODEL, box=32, pixel_size=2.5,
                                   snr=0.2, defocus_min_um=1.0, defocus_max_um=2.5, seed=1))
    final = refine3d(config(star, root / "refine"))
    return star, final


def test_final_map_matches_truth_and_reported_resolution(refined):
    star, final = refined
    truth, pixel = read_map(star.parent / "truth.mrc")
    vol, _ = read_map(final)
    curve = fsc(torch.from_numpy(vol).double(), torch.from_numpy(truth).double())
    truth_shell = resolution_shell(curve, 0.5)
    assert truth_shell >= 12  # of 16 (Nyquist 5 Å)
    model = starfile.read(final.parent / "run_model.star", always_dict=True)
    gold = model["model_class_1"]["rlnGoldStandardFsc"].to_numpy()
    reported_shell = resolution_shell(torch.from_numpy(gold), 0.143)
    # no overfitting: the gold-standard 0.143 resolution agrees with FSC(truth) = 0.5 within 2 shells
    assert abs(reported_shell - truth_shell) <= 2


def test_poses_close_to_truth(refined):
    star, final = refined
    truth = read_particles_star(star).particles
    data = read_particles_star(final.parent / "run_data.star").particles
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    err = angular_distance_deg(euler_to_matrix(torch.tensor(data[cols].to_numpy())),
                               euler_to_matrix(torch.tensor(truth[cols].to_numpy())))
    assert float(err.median()) < 10.0  # 23 kDa at box 32 and SNR 0.2: accuracy ~ the 7.5° sampling
    shift = np.hypot(*(data[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
                       - truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).T) / 2.5
    assert np.median(shift) < 0.5
    for col in ("rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples", "rlnLogLikeliContribution",
                "rlnRandomSubset"):
        assert col in data
    assert set(data["rlnRandomSubset"]) == {1, 2}


def test_relion_job_layout(refined):
    _, final = refined
    folder = final.parent
    for name in ("run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc",
                 "run_data.star", "run_model.star", "run_it001_half1_class001.mrc", "run_it001_data.star",
                 "run_it001_half2_model.star", "fsc.png", "angular_distribution.png", "job.json"):
        assert (folder / name).exists(), name
    general = starfile.read(folder / "run_model.star", always_dict=True)["model_general"]
    assert float(general["rlnCurrentResolution"]) > 0


@pytest.mark.skipif(shutil.which("relion_reconstruct") is None, reason="RELION not installed")
def test_relion_reads_ember_data_star(refined, tmp_path):
    _, final = refined
    out = tmp_path / "relion.mrc"
    subprocess.run(["relion_reconstruct", "--i", "run_data.star", "--o", str(out), "--ctf"], cwd=final.parent,
                   check=True, capture_output=True)
    ours, _ = read_map(final)
    theirs, _ = read_map(out)
    assert fsc(torch.from_numpy(ours).double(), torch.from_numpy(theirs).double())[:10].min() > 0.8


def test_continue_reproduces_the_next_iteration(tmp_path):
    star = simulate(SimulateConfig(output=tmp_path / "sim", n_particles=200, model_path=MODEL, box=32,
                                   pixel_size=2.5, snr=0.5, seed=2))
    refine3d(config(star, tmp_path / "a", max_iterations=2))
    refine3d(config(star, tmp_path / "b", max_iterations=2, continue_from=tmp_path / "a" / "run_it001_state.json"))
    a, _ = read_map(tmp_path / "a" / "run_it002_half1_class001.mrc")
    b, _ = read_map(tmp_path / "b" / "run_it002_half1_class001.mrc")
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())
