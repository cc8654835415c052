"""ember class2d: β-galactosidase (5A1A) seen in 4 distinct views at random in-plane rotations, box 32."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from scipy.ndimage import rotate

from ember.io.mrc import read_map, read_stack
from ember.io.star import read_particles_star
from ember.jobs.class2d import Class2DConfig, class2d, subset_size
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.rotations import euler_to_matrix
from ember.operators.forward import clean_images
from ember.operators.projector import Projector
from tests.report_check import assert_report, number

BGAL = Path(__file__).parents[2].parent / "shared" / "data" / "structures" / "5a1a.cif.gz"
VIEWS = np.array([[0.0, 0.0], [0.0, 90.0], [90.0, 90.0], [45.0, 45.0]])  # (rot, tilt) degrees


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """600 particles, SNR 0.1, 7 Å/px, CTF on: view j % 4 of VIEWS at a random psi; returns the
    STAR, the true view of each particle and the CTF-free, unshifted true projections (4, N, N)."""
    if not BGAL.exists():
        pytest.skip("shared/data/structures not beside the repository")
    d = tmp_path_factory.mktemp("views")
    n = 600
    rng = np.random.default_rng(4)
    view = np.arange(n) % len(VIEWS)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1}@x.mrcs" for i in range(n)], "rlnOpticsGroup": 1,
                              "rlnAngleRot": VIEWS[view, 0], "rlnAngleTilt": VIEWS[view, 1],
                              "rlnAnglePsi": rng.uniform(0, 360, n)})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [7.0], "rlnImageSize": [32],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    starfile.write({"optics": optics, "particles": particles}, d / "views.star")
    star = simulate(SimulateConfig(output=d / "sim", n_particles=n, model_path=BGAL, box=32, pixel_size=7.0, snr=0.1,
                                   max_offset_px=2.0, angles_from=d / "views.star", seed=6))
    truth = torch.from_numpy(read_map(d / "sim" / "truth.mrc")[0]).double()
    angles = torch.from_numpy(np.column_stack([VIEWS, np.zeros(len(VIEWS))]))
    proj = clean_images(Projector.from_volume(truth), euler_to_matrix(angles), torch.zeros(len(VIEWS), 2), None)
    return star, view, proj.numpy()


def _best_correlation(image: np.ndarray, reference: np.ndarray) -> float:
    """Largest normalised cross-correlation of `image` with `reference` over in-plane rotations
    (2° steps) and integer translations (circular)."""
    def norm(x: np.ndarray) -> np.ndarray:
        x = x - x.mean()
        return x / np.linalg.norm(x)

    a = np.fft.rfft2(norm(image))
    best = -1.0
    for psi in np.arange(0, 360, 2.0):
        r = norm(rotate(reference, psi, reshape=False, order=1))
        best = max(best, float(np.fft.irfft2(a * np.conj(np.fft.rfft2(r)), s=image.shape).max()))
    return best


def test_class_averages_match_the_true_views(views, tmp_path):
    """K = 4 from random subsets: ≥ 85 % of the particles sit in a class whose average matches
    their own true view (correlation ≥ 0.8 with the CTF-free projection after in-plane and
    translational alignment); writes RELION's files and the montage."""
    star, view, truth = views
    out = class2d(Class2DConfig(star=star, output=tmp_path, n_classes=4, particle_diameter_angstrom=200.0,
                                iterations=12, seed=1))
    averages, _ = read_stack(out)
    assert averages.shape == (4, 32, 32)
    corr = np.array([[_best_correlation(avg, t) for t in truth] for avg in averages])  # (class, view)
    found = read_particles_star(tmp_path / "run_it012_data.star").particles["rlnClassNumber"].to_numpy() - 1
    assert np.mean(corr[found, view] >= 0.8) >= 0.85
    model = starfile.read(tmp_path / "run_it012_model.star")
    assert int(model["model_general"]["rlnReferenceDimensionality"]) == 2
    assert model["model_classes"]["rlnClassDistribution"].sum() == pytest.approx(1.0)
    assert (tmp_path / "classes.png").stat().st_size > 0
    html = assert_report(tmp_path / "report.html", tmp_path, 3)
    counts = np.bincount(found, minlength=4)
    for k in range(4):
        assert number(html, f"class {k + 1}").startswith(f"{counts[k]} particles")


def test_random_subset_averages_start_different(views, tmp_path):
    """The first references are averages of random subsets at random psi: no two are equal, and
    after one iteration every class holds particles."""
    star, _, _ = views
    out = class2d(Class2DConfig(star=star, output=tmp_path, n_classes=3, particle_diameter_angstrom=200.0,
                                iterations=1, seed=2))
    found = read_particles_star(tmp_path / "run_it001_data.star").particles["rlnClassNumber"].to_numpy()
    assert set(found) == {1, 2, 3}
    averages, _ = read_stack(out)
    assert min(np.linalg.norm(averages[i] - averages[j]) for i in range(3) for j in range(i)) > 0


def test_fast_subsets_follow_relion_schedule():
    """100·K particles in iterations 1–5, 3× in 6–10, max(3×, 30 %) in 11–15, then all."""
    sizes = [subset_size(it, 100_000, 10, 25, True) for it in (1, 5, 6, 10, 11, 15, 16)]
    assert sizes == [1000, 1000, 3000, 3000, 30000, 30000, 100_000]
    assert subset_size(1, 100_000, 10, 19, True) == 100_000
