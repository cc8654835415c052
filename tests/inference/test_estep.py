from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ember.inference import estep
from ember.inference.engine import run_expectation
from ember.inference.estep import CrossCorrelation, EStepSettings, Marginalisation, significance
from ember.inference.images import FrequencyWindow
from ember.inference.model import Model, ParticleResults, SamplingState, Sums
from ember.inference.mstep import initial_sigma2
from ember.inference.sampling import asymmetric_unit, translation_grid
from ember.io.mrc import read_map
from ember.io.particles import ParticleDataSet
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.rotations import angular_distance_deg, euler_to_matrix
from ember.maths.symmetry import symmetry_operators

MODEL = Path(__file__).parents[2] / "src" / "ember" / "data" / "1ake.cif"


def test_significance_keeps_smallest_set_holding_the_fraction():
    w = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    thr, count = significance(w, 0.9)
    assert count.tolist() == [3, 1]
    assert thr.tolist() == [0.15, 1.0]
    thr, count = significance(w, 0.999)
    assert count.tolist() == [4, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("topk_fraction", [1.0, 0.0])
def test_significance_equals_sorting_whole_rows(dtype, topk_fraction, monkeypatch):
    """Both selections (topk over the candidates, or the histogram) give the count and threshold
    of a full descending sort, for rows from one dominant weight to flat, with zeros and ties."""
    monkeypatch.setattr(estep, "TOPK_FRACTION", topk_fraction)
    gen = torch.Generator().manual_seed(1)
    widths = torch.logspace(-1, 4, 40, dtype=torch.float64)[:, None]
    log_w = -torch.rand((40, 5000), generator=gen, dtype=torch.float64) * widths
    w = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values).to(dtype)
    w[::3, :700] = 0.0
    w[1::4, 1000:1400] = w[1::4, 999:1000]  # ties
    for fraction in (0.9, 0.999):
        thr, count = significance(w, fraction)
        ordered = torch.sort(w.double(), dim=1, descending=True).values
        cum = torch.cumsum(ordered, dim=1)
        expect = (cum < fraction * w.double().sum(dim=1, keepdim=True)).sum(dim=1) + 1
        assert torch.equal(count, expect)
        assert torch.equal(thr.double(), ordered.gather(1, (expect - 1)[:, None]).squeeze(1))


@pytest.mark.parametrize("topk_fraction", [1.0, 0.0])
def test_significance_of_the_whole_sum_never_selects_zeros(topk_fraction, monkeypatch):
    """fraction = 1: every nonzero weight is kept and none of the zeros, whatever the rounding of
    the cumulative sum."""
    monkeypatch.setattr(estep, "TOPK_FRACTION", topk_fraction)
    w = torch.exp(-5 * torch.rand((20, 3000), generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    w[:, :100] = 0.0
    thr, count = significance(w, 1.0)
    assert (count == 2900).all()
    assert ((w >= thr[:, None]).sum(dim=1) == 2900).all()


@pytest.mark.parametrize(("maxcc", "pad"), [(False, 2), (True, 2), (False, 1)])
def test_estep_recovers_known_poses_of_clean_images(tmp_path, maxcc, pad):
    """Nearly noise-free images of 1AKE: the best pose is a grid point within one fine step (7.5°)
    for most images, offsets within the fine step, sharp posteriors (Bayesian and maxCC; and with
    the unpadded projections of RELION's initial model, `pad` 1)."""
    n = 32
    star = simulate(SimulateConfig(output=tmp_path / "s", n_particles=12, model_path=MODEL, box=n, pixel_size=2.5,
                                   snr=5.0, max_offset_px=2.0, seed=4))
    ds = ParticleDataSet.from_star(star)
    truth_angles, truth_offsets = ds.angles_deg(), ds.offsets_px()
    ref = torch.from_numpy(read_map(star.parent / "truth.mrc")[0]).double()
    sigma2 = initial_sigma2(ds, np.arange(len(ds)), 14.0)
    dirs = asymmetric_unit(2, symmetry_operators("C1"))
    pdf = np.zeros(192)
    pdf[dirs] = 1 / len(dirs)
    model = Model.initial([ref], sigma2, 10.0, pdf, pad=pad)
    sampling = SamplingState(2, 1, 3.0, 1.0, dirs)
    win = FrequencyWindow.build(n, n)
    st = EStepSettings(win, win, torch.from_numpy(translation_grid(3.0, 1.0)), 1.0, 1, 2.5,
                       weighting=CrossCorrelation() if maxcc else Marginalisation())
    sums = Sums.empty(n, 1, 1, 192, pad=pad)
    res = ParticleResults.empty(len(ds))
    run_expectation(ds, np.arange(len(ds)), model, sampling, st, sums, res, prior_angles_deg=np.zeros((12, 3)),
                    prior_offsets_px=np.zeros((12, 2)), symmetry=symmetry_operators("C1"), mask_radius_px=14.0)
    err = angular_distance_deg(euler_to_matrix(torch.from_numpy(res.angles)),
                               euler_to_matrix(torch.from_numpy(truth_angles)))
    assert np.median(err.numpy()) < 7.5
    assert np.median(np.abs(res.offsets_px - truth_offsets)) < 0.5
    assert res.pmax.mean() > 0.5
    if maxcc:  # hard assignment: one sample per image, σ² sums untouched
        assert (res.pmax == 1).all() and float(sums.n_images.sum()) == 0
    else:
        assert float(sums.n_images.sum()) == pytest.approx(12, rel=1e-3)


def test_offset_prior_is_in_angstrom_for_old_offset_and_search_translation():
    """ALGORITHM §4.3: log p(t) = −|round(old) + t − prior|²_Å / (2σ²_off), with old offset, search
    translation and prior centre all in pixels times the pixel size (RELION 3.1.3 adds the search
    translation in Å to the old offset in pixels; at 4 Å/px that narrows the prior 16-fold)."""
    batch = SimpleNamespace(offset0_px=torch.tensor([[1.0, -2.0]], dtype=torch.float64),
                            offset_prior_px=torch.tensor([[0.5, 0.0]], dtype=torch.float64))
    t = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-2.0, 4.0]], dtype=torch.float64)
    pixel, sigma = 4.0, 10.0
    log_p = estep._offset_log_prior(batch, t, SimpleNamespace(sigma_offset_angstrom=sigma), pixel)
    d_px = torch.tensor([[0.5, -2.0], [2.5, -2.0], [-1.5, 2.0]], dtype=torch.float64)
    expected = -((d_px * pixel) ** 2).sum(-1) / (2 * sigma**2)
    assert torch.allclose(log_p[0], expected)


@pytest.mark.parametrize(("pad", "left"), [(2, 0.01), (1, 0.2)])
def test_residual_sums_vanish_for_images_the_reference_explains(tmp_path, pad, left):
    """VDAM back-projects residuals X − C·P V̂: for noise-free CTF-modulated images of the
    reference itself, aligned at their true poses, the residual sums are a small fraction of the
    image sums, with the same weights. What is left is the projector's interpolation against the
    simulator's (2× padded): < 1 % at pad 2, ~12 % unpadded (pad 1, RELION's initial model). Not
    subtracting leaves 100 %, a wrong sign 200 %."""
    n = 32
    star = simulate(SimulateConfig(output=tmp_path / "s", n_particles=20, model_path=MODEL, box=n, pixel_size=2.5,
                                   max_offset_px=0.0, seed=6))
    ds = ParticleDataSet.from_star(star)
    ref = torch.from_numpy(read_map(star.parent / "truth.mrc")[0]).double()
    model = Model.initial([ref], initial_sigma2(ds, np.arange(len(ds)), 14.0), 10.0, np.ones(1), pad=pad)
    win = FrequencyWindow.build(n, n)
    sums = []
    for residual in (False, True):
        st = EStepSettings(win, win, torch.zeros((1, 2), dtype=torch.float64), 1.0, 0, 2.5, residual_sums=residual)
        s = Sums.empty(n, 1, 1, 1, pad=pad)
        run_expectation(ds, np.arange(len(ds)), model, SamplingState(0, 0, 0.0, 1.0, np.arange(1)), st, s,
                        ParticleResults.empty(len(ds)), prior_angles_deg=ds.angles_deg(),
                        prior_offsets_px=np.zeros((len(ds), 2)), symmetry=symmetry_operators("C1"),
                        mask_radius_px=16.0, fixed_poses=True)
        s.reconstructors[0].prepare()
        sums.append(s.reconstructors[0])
    images, residuals = sums
    torch.testing.assert_close(residuals.weight, images.weight)
    assert float(residuals.data.abs().sum() / images.data.abs().sum()) < left
