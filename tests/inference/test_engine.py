"""The likelihood engine v2: per-image priors across pass-2 groups (bug A), dense ≡ sparse pass 2,
and the class axis (K = 2)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ember.inference import estep
from ember.inference.engine import run_expectation
from ember.inference.estep import EStepSettings
from ember.inference.images import FrequencyWindow
from ember.inference.model import Model, ParticleResults, SamplingState, Sums
from ember.inference.mstep import initial_sigma2
from ember.inference.sampling import angular_step_deg, asymmetric_unit, translation_grid
from ember.io.mrc import read_map
from ember.io.particles import ParticleDataSet
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.rotations import angular_distance_deg, euler_to_matrix
from ember.maths.symmetry import symmetry_operators

ROOT = Path(__file__).parents[2]
AKE_CLOSED = ROOT / "src" / "ember" / "data" / "1ake.cif"
AKE_OPEN = ROOT.parent / "shared" / "data" / "structures" / "4ake.pdb"
BOX, PIXEL, RADIUS = 32, 2.5, 14.0


def _data(tmp: Path, model: Path, n: int, snr: float, seed: int, pixel: float = PIXEL
          ) -> tuple[ParticleDataSet, torch.Tensor]:
    star = simulate(SimulateConfig(output=tmp, n_particles=n, model_path=model, box=BOX, pixel_size=pixel, snr=snr,
                                   max_offset_px=1.5, seed=seed))
    return ParticleDataSet.from_star(star), torch.from_numpy(read_map(tmp / "truth.mrc")[0]).double()


def _estep(ds: ParticleDataSet, refs: list[torch.Tensor], sampling: SamplingState, priors: np.ndarray,
           order: int = 2) -> tuple[ParticleResults, Sums]:
    n = len(ds)
    sigma2 = initial_sigma2(ds, np.arange(n), RADIUS)
    n_dirs = 12 * 4**order
    pdf = np.zeros(n_dirs)
    pdf[sampling.directions] = 1 / len(sampling.directions)
    model = Model.initial(refs, sigma2, 10.0, pdf)
    win = FrequencyWindow.build(BOX, BOX)
    st = EStepSettings(win, win, torch.from_numpy(translation_grid(2.0, 1.0)), 1.0, 1, ds.pixel_size)
    sums = Sums.empty(BOX, len(refs), 1, n_dirs, r_max=BOX // 2)
    res = ParticleResults.empty(n, len(refs))
    run_expectation(ds, np.arange(n), model, sampling, st, sums, res, prior_angles_deg=priors,
                    prior_offsets_px=np.zeros((n, 2)), symmetry=symmetry_operators("C1"), mask_radius_px=RADIUS)
    return res, sums


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("noisy"), AKE_CLOSED, 16, 0.05, 5)


def test_local_priors_reach_every_pass2_group(noisy, monkeypatch):
    """Bug A: with the significant samples split over many groups, every image must keep its own
    local-search prior; results equal those of a single group."""
    ds, truth = noisy
    gen = np.random.default_rng(0)
    priors = ds.angles_deg() + gen.normal(0, 4, size=(len(ds), 3))
    sampling = SamplingState(3, 1, 2.0, 1.0, np.arange(12 * 4**3), sigma_ang_deg=2 * angular_step_deg(4))
    one, sums_one = _estep(ds, [truth], sampling, priors, order=3)
    monkeypatch.setattr(estep, "MAX_SAMPLES_PER_GROUP", 10)
    many, sums_many = _estep(ds, [truth], sampling, priors, order=3)
    np.testing.assert_allclose(many.pmax, one.pmax, rtol=1e-5)
    np.testing.assert_allclose(many.angles, one.angles, atol=1e-6)
    np.testing.assert_allclose(many.loglik, one.loglik, rtol=1e-9)
    assert float(sums_many.offset_sq) == pytest.approx(float(sums_one.offset_sq), rel=1e-6)


def test_dense_and_sparse_pass2_give_the_same_posteriors(noisy, monkeypatch):
    """The two pass-2 evaluators (GEMM over the whole fine grid, or products over significant
    samples) are the same computation: same poses, Pmax, log-likelihoods and sums."""
    ds, truth = noisy
    dirs = np.arange(192)
    sampling = SamplingState(2, 1, 2.0, 1.0, dirs)
    monkeypatch.setattr(estep, "SPARSE_COST", 10**9)  # always dense
    dense, sd = _estep(ds, [truth], sampling, np.zeros((len(ds), 3)))
    monkeypatch.setattr(estep, "SPARSE_COST", 0)  # always sparse
    sparse, ss = _estep(ds, [truth], sampling, np.zeros((len(ds), 3)))
    assert (dense.pmax < 0.9).any()  # the posteriors are broad enough for pruning to matter
    np.testing.assert_allclose(dense.pmax, sparse.pmax, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(dense.loglik, sparse.loglik, rtol=1e-6)
    np.testing.assert_allclose(dense.angles, sparse.angles, atol=1e-3)
    torch.testing.assert_close(sd.sigma2, ss.sigma2, rtol=1e-4, atol=0)
    for a, b in zip(sd.reconstructors, ss.reconstructors, strict=True):
        torch.testing.assert_close(a.sums, b.sums, rtol=1e-3, atol=1e-3 * float(b.sums.abs().max()))


def test_two_classes_separate_images_of_two_maps(tmp_path):
    """K = 2: clean images of closed (1AKE) and open (4AKE) adenylate kinase, both maps as
    references: every image's class posterior > 0.99 for its own map, poses still right."""
    if not AKE_OPEN.exists():
        pytest.skip("shared/data/structures not beside the repository")
    closed, map_closed = _data(tmp_path / "closed", AKE_CLOSED, 8, 5.0, 1, pixel=3.0)
    opened, map_open = _data(tmp_path / "open", AKE_OPEN, 8, 5.0, 2, pixel=3.0)
    sampling = SamplingState(2, 1, 2.0, 1.0, asymmetric_unit(2, symmetry_operators("C1")))
    for k, ds in enumerate((closed, opened)):
        res, sums = _estep(ds, [map_closed, map_open], sampling, np.zeros((len(ds), 3)))
        assert res.class_posterior[:, k].min() > 0.99
        assert (res.classes == k).all()
        assert sums.class_weight[k] == pytest.approx(len(ds), rel=1e-3)
        err = angular_distance_deg(euler_to_matrix(torch.from_numpy(res.angles)),
                                   euler_to_matrix(torch.from_numpy(ds.angles_deg())))
        assert float(err.median()) < 7.5
