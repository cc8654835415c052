from pathlib import Path

import numpy as np
import pytest
import torch

from ember.errors import EmberInputError
from ember.io.mrc import read_map
from ember.jobs.reconstruct import ReconstructConfig, reconstruct
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.fsc import fsc, resolution_shell

MODEL = Path(__file__).parents[2] / "src" / "ember" / "data" / "1ake.cif"


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    out = tmp_path_factory.mktemp("noisy")
    return simulate(
        SimulateConfig(output=out, n_particles=1500, model_path=MODEL, box=32, pixel_size=2.5, snr=0.2, seed=2)
    )


def fsc_vs_truth(volume: np.ndarray, star: Path) -> torch.Tensor:
    truth, _ = read_map(star.parent / "truth.mrc")
    return fsc(torch.from_numpy(volume).double(), torch.from_numpy(truth).double())


def test_noise_free_reconstruction_reaches_near_nyquist(tmp_path):
    star = simulate(
        SimulateConfig(output=tmp_path / "s", n_particles=1000, model_path=MODEL, box=32, pixel_size=2.5, seed=1)
    )
    vol = reconstruct(ReconstructConfig(star=star, output=tmp_path / "rec.mrc"))
    curve = fsc_vs_truth(vol, star)
    assert resolution_shell(curve, 0.5) >= 14  # of 16 (Nyquist)
    assert read_map(tmp_path / "rec.mrc")[1] == pytest.approx(2.5)


def test_ctf_correction_matters(noisy, tmp_path):
    with_ctf = fsc_vs_truth(reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "a.mrc")), noisy)
    without = fsc_vs_truth(reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "b.mrc", ctf=False)), noisy)
    assert with_ctf[1:12].mean() > without[1:12].mean() + 0.2


def test_halves_and_wiener(noisy, tmp_path):
    h1 = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "h1.mrc", subset=1))
    h2 = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "h2.mrc", subset=2))
    full = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "w.mrc", wiener=True))
    half_curve = fsc(torch.from_numpy(h1).double(), torch.from_numpy(h2).double())
    truth_h1, truth_full = fsc_vs_truth(h1, noisy), fsc_vs_truth(full, noisy)
    # the halves are independent noisy estimates: their FSC is below each one's FSC with the truth
    assert half_curve[4:14].mean() < truth_h1[4:14].mean()
    # all particles with the Wiener filter beat one half
    assert resolution_shell(truth_full, 0.5) >= resolution_shell(truth_h1, 0.5)
    assert truth_full[8:16].mean() > truth_h1[8:16].mean()
    # Wiener filtering damps the noise-dominated shells relative to the unregularised map
    plain = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "p.mrc"))
    assert np.abs(full).sum() < np.abs(plain).sum()


def test_maxres_and_bad_options(noisy, tmp_path):
    vol = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "m.mrc", maxres_angstrom=10.0))
    curve = fsc_vs_truth(vol, noisy)
    assert curve[12:].abs().max() < 0.2  # nothing beyond shell 8 (10 Å) but interpolation leakage
    with pytest.raises(EmberInputError, match="Nyquist"):
        reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "x.mrc", maxres_angstrom=3.0))
    with pytest.raises(EmberInputError, match="subset"):
        ReconstructConfig(star=noisy, output=tmp_path / "x.mrc", subset=3)
    assert not (tmp_path / "x.mrc").exists()
