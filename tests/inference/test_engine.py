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


def _data(tmp: Path, model: Path, n: int, snr: float | None, seed: int, pixel: float = PIXEL
          ) -> tuple[ParticleDataSet, torch.Tensor]:
    star = simulate(SimulateConfig(output=tmp, n_particles=n, model_path=model, box=BOX, pixel_size=pixel, snr=snr,
                                   max_offset_px=1.5, seed=seed))
    return ParticleDataSet.from_star(star), torch.from_numpy(read_map(tmp / "truth.mrc")[0]).double()


def _estep(ds: ParticleDataSet, refs: list[torch.Tensor], sampling: SamplingState, priors: np.ndarray,
           order: int = 2, batch_size: int = 64) -> tuple[ParticleResults, Sums]:
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
                    prior_offsets_px=np.zeros((n, 2)), symmetry=symmetry_operators("C1"), mask_radius_px=RADIUS,
                    batch_size=batch_size)
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


def test_local_search_projections_are_reused_across_batches(noisy, monkeypatch):
    """Local searches keep their coarse projections across batches (images in pose order): with
    priors in two clusters far fewer rows are projected than without the cache, also with a cache
    that must evict, and the results are the same (the same projections; only the order of the
    sums changes)."""
    from ember.inference import engine

    ds, truth = noisy
    gen = np.random.default_rng(0)
    priors = ds.angles_deg()[np.arange(len(ds)) % 2] + gen.normal(0, 4, size=(len(ds), 3))
    sampling = SamplingState(3, 1, 2.0, 1.0, np.arange(12 * 4**3), sigma_ang_deg=2 * angular_step_deg(4))
    projected = []
    plain = engine.project_rows

    def counting(projectors, matrices, classes, k):
        projected[-1] += len(matrices)
        return plain(projectors, matrices, classes, k)

    monkeypatch.setattr(engine, "project_rows", counting)
    runs = {}
    row_bytes = 12 * len(FrequencyWindow.build(BOX, BOX).k)  # 2K + K float32
    for name, budget in (("none", 0), ("evicting", 320 * row_bytes), ("default", engine.CACHE_BYTES)):
        monkeypatch.setattr(engine, "CACHE_BYTES", budget)
        projected.append(0)
        runs[name] = _estep(ds, [truth], sampling, priors, order=3, batch_size=2)
    assert projected[2] < 0.5 * projected[0]
    assert projected[2] > 320 and projected[1] < projected[0]  # 320 rows hold less than the whole E-step
    (ref, ref_sums) = runs["none"]
    for res, sums in (runs["evicting"], runs["default"]):
        np.testing.assert_array_equal(res.angles, ref.angles)
        np.testing.assert_allclose(res.pmax, ref.pmax, rtol=1e-9)
        torch.testing.assert_close(sums.sigma2, ref_sums.sigma2, rtol=1e-9, atol=0)
        torch.testing.assert_close(sums.reconstructors[0].sums, ref_sums.reconstructors[0].sums, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_classes", [1, 2])
def test_dense_and_sparse_pass2_give_the_same_posteriors(noisy, monkeypatch, n_classes):
    """The two pass-2 evaluators (GEMM over the whole fine grid, or products over significant
    samples) are the same computation: same poses, Pmax, log-likelihoods and sums, also with a
    second class (the map at 0.7× its scale) sharing the posteriors."""
    ds, truth = noisy
    refs = [truth, 0.7 * truth][:n_classes]
    dirs = np.arange(192)
    sampling = SamplingState(2, 1, 2.0, 1.0, dirs)
    monkeypatch.setattr(estep, "SPARSE_COST", 10**9)  # always dense
    dense, sd = _estep(ds, refs, sampling, np.zeros((len(ds), 3)))
    monkeypatch.setattr(estep, "SPARSE_COST", 0)  # always sparse
    sparse, ss = _estep(ds, refs, sampling, np.zeros((len(ds), 3)))
    if n_classes == 2:
        assert ((dense.class_posterior > 0.05) & (dense.class_posterior < 0.95)).any()  # both classes share images
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


def _two_group_star(tmp: Path, ds: ParticleDataSet, images2: np.ndarray, premultiplied: bool,
                    images1: np.ndarray | None = None) -> Path:
    """A STAR of the particles of `ds` twice: optics (and scale) group 1 the original images (or
    `images1`), group 2 `images2`."""
    from ember.io.mrc import write_map
    from ember.io.star import ParticleTable, read_particles_star, write_particles_star

    write_map(tmp / "g2.mrcs", images2.astype(np.float32), ds.pixel_size)
    t = read_particles_star(ds.star_path)
    names = ds.image_names_relative_to(tmp)
    if images1 is not None:
        write_map(tmp / "g1.mrcs", images1.astype(np.float32), ds.pixel_size)
        names = [f"{i + 1:06d}@g1.mrcs" for i in range(len(ds))]
    first = t.particles.assign(rlnImageName=names, rlnOpticsGroup=1, rlnGroupNumber=1)
    second = t.particles.assign(rlnImageName=[f"{i + 1:06d}@g2.mrcs" for i in range(len(ds))], rlnOpticsGroup=2,
                                rlnGroupNumber=2)
    optics = t.optics.iloc[[0, 0]].reset_index(drop=True).assign(rlnOpticsGroup=[1, 2],
                                                                  rlnOpticsGroupName=["one", "two"])
    optics["rlnCtfDataAreCtfPremultiplied"] = [0, int(premultiplied)]
    import pandas as pd

    write_particles_star(tmp / "two.star", ParticleTable(optics, pd.concat([first, second], ignore_index=True)))
    return tmp / "two.star"


def test_sigma2_is_learned_per_optics_group(noisy, tmp_path):
    """Group 2 = the same particles with extra white noise (variance 1 → 4): from a flat start the
    M-step's σ² of group 2 is 4× group 1's at high resolution, where the data are noise."""
    from ember.inference.mstep import update_sigma2

    ds, truth = noisy
    gen = np.random.default_rng(1)
    images = ds.images(np.arange(len(ds)))
    two = ParticleDataSet.from_star(_two_group_star(tmp_path, ds, images + gen.normal(0, 3**0.5, images.shape),
                                                    premultiplied=False))
    sampling = SamplingState(2, 1, 2.0, 1.0, np.arange(192))
    n = len(two)
    model = Model.initial([truth], torch.ones((2, BOX // 2 + 1), dtype=torch.float64), 10.0, np.full(192, 1 / 192),
                          n_scale_groups=2)
    win = FrequencyWindow.build(BOX, BOX)
    st = EStepSettings(win, win, torch.from_numpy(translation_grid(2.0, 1.0)), 1.0, 1, PIXEL)
    sums = Sums.empty(BOX, 1, 2, 192)
    run_expectation(two, np.arange(n), model, sampling, st, sums, ParticleResults.empty(n),
                    prior_angles_deg=np.zeros((n, 3)), prior_offsets_px=np.zeros((n, 2)),
                    symmetry=symmetry_operators("C1"), mask_radius_px=RADIUS)
    assert sums.n_images.tolist() == pytest.approx([len(ds), len(ds)], rel=2e-3)  # 99.9 % kept
    sigma2 = update_sigma2(sums, model.sigma2_noise)
    ratio = sigma2[1, 10:] / sigma2[0, 10:]
    assert float(ratio.mean()) == pytest.approx(4.0, rel=0.1)


def test_premultiplied_images_give_the_same_poses_and_sums(tmp_path):
    """Group 2 holds the same clean images stored as C·X with rlnCtfDataAreCtfPremultiplied = 1:
    the E-step finds the same poses and back-projects the same C·X and C² (ALGORITHM §3.3)."""
    from ember.maths.fourier import fft2_centered, ifft2_centered
    from ember.operators.ctf import particle_ctfs

    ds, truth = _data(tmp_path / "clean", AKE_CLOSED, 10, None, 7)
    idx = np.arange(len(ds))
    c = particle_ctfs(ds, idx, dtype=torch.float64)
    pre = ifft2_centered(fft2_centered(torch.from_numpy(ds.images(idx)).double()) * c, BOX).numpy()
    two = ParticleDataSet.from_star(_two_group_star(tmp_path, ds, pre, premultiplied=True))
    sampling = SamplingState(2, 1, 2.0, 1.0, np.arange(192))
    results, sums = [], []
    for rows in (idx, idx + len(ds)):
        sigma2 = 1e-3 * initial_sigma2(two, idx, RADIUS)[:1].repeat(2, 1)  # clean images: sharp posteriors
        model = Model.initial([truth], sigma2, 10.0, np.full(192, 1 / 192), n_scale_groups=2)
        win = FrequencyWindow.build(BOX, BOX)
        st = EStepSettings(win, win, torch.from_numpy(translation_grid(2.0, 1.0)), 1.0, 1, PIXEL)
        s = Sums.empty(BOX, 1, 2, 192)
        r = ParticleResults.empty(len(two))
        run_expectation(two, rows, model, sampling, st, s, r, prior_angles_deg=np.zeros((len(two), 3)),
                        prior_offsets_px=np.zeros((len(two), 2)), symmetry=symmetry_operators("C1"),
                        mask_radius_px=RADIUS)
        results.append(r.angles[rows])
        assert r.pmax[rows].min() > 0.9
        sums.append(s.reconstructors[0].sums)
    err = angular_distance_deg(euler_to_matrix(torch.from_numpy(results[1])),
                               euler_to_matrix(torch.from_numpy(ds.angles_deg())))
    assert float(err.median()) < 7.5
    plain, premult = sums
    assert float((premult - plain).norm() / plain.norm()) < 0.1


def _estep_two(two: ParticleDataSet, model: Model, **settings) -> tuple[ParticleResults, Sums]:
    n = len(two)
    win = FrequencyWindow.build(BOX, BOX)
    st = EStepSettings(win, win, torch.from_numpy(translation_grid(2.0, 1.0)), 1.0, 1, PIXEL, **settings)
    sums = Sums.empty(BOX, 1, 2, 192, n_scale_groups=2)
    res = ParticleResults.empty(n)
    run_expectation(two, np.arange(n), model, SamplingState(2, 1, 2.0, 1.0, np.arange(192)), st, sums, res,
                    prior_angles_deg=np.zeros((n, 3)), prior_offsets_px=np.zeros((n, 2)),
                    symmetry=symmetry_operators("C1"), mask_radius_px=RADIUS)
    return res, sums


def test_norm_correction_follows_image_intensity(noisy, tmp_path):
    """Group 2 = the same images ×2 (noise-dominated, SNR 0.05): the new norm corrections of group 2
    are twice those of group 1 (the residual's standard deviation, ALGORITHM §5.6)."""
    from ember.inference.mstep import norm_corrections

    ds, truth = noisy
    images = ds.images(np.arange(len(ds)))
    two = ParticleDataSet.from_star(_two_group_star(tmp_path, ds, 2 * images, premultiplied=False))
    sigma2 = initial_sigma2(two, np.arange(len(two)), RADIUS)
    model = Model.initial([truth], sigma2, 10.0, np.full(192, 1 / 192), n_scale_groups=2)
    res, _ = _estep_two(two, model, norm_residuals=True)
    norms = norm_corrections(np.ones(len(two)), res.residual_power, 1.0)
    first, second = norms[: len(ds)], norms[len(ds) :]
    assert 0.5 < first.mean() < 1.1  # unit-variance noise, partly replaced by the mask's background
    assert second.mean() / first.mean() == pytest.approx(2.0, rel=0.1)


def test_scale_correction_recovers_the_group_intensity(tmp_path):
    """Scale group 2 holds the signal ×1.5 with the same noise: the M-step's group scales are in
    the ratio 1.5 and average 1 over the particles (RELION's normalisation)."""
    from ember.inference.mstep import group_scales

    ds, truth = _data(tmp_path / "clean", AKE_CLOSED, 16, None, 9)
    clean = ds.images(np.arange(len(ds)))
    gen = np.random.default_rng(2)
    sd = 0.5 * clean.std()
    two = ParticleDataSet.from_star(_two_group_star(
        tmp_path, ds, 1.5 * clean + gen.normal(0, sd, clean.shape), premultiplied=False,
        images1=clean + gen.normal(0, sd, clean.shape)))
    sigma2 = initial_sigma2(two, np.arange(len(two)), RADIUS)
    model = Model.initial([truth], sigma2, 10.0, np.full(192, 1 / 192), n_scale_groups=2)
    model.ssnr[:] = 10.0  # every shell counts (data_vs_prior > 3)
    _, sums = _estep_two(two, model, scale_sums=True)
    scale = group_scales(sums, model.scale)
    assert scale[1] / scale[0] == pytest.approx(1.5, rel=0.05)
    assert scale.mean() == pytest.approx(1.0, rel=1e-3)  # particle-weighted mean 1
