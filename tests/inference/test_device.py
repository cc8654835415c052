"""The E-step on an accelerator (`device=`): every tensor of the computation stays on the device.

Without a GPU, `FakeDevice` (tests/fake_device.py) plays one: CPU memory with CUDA's rules (a
host tensor mixed into a device operation raises, `.numpy()` of a device tensor raises), so the
device path runs here and must give the host path's results exactly. With CUDA present, the
same E-step on the GPU (float32 GEMMs) must agree with the CPU within float tolerance."""

import numpy as np
import pytest
import torch

from ember.inference import estep
from ember.inference.engine import run_expectation
from ember.inference.estep import EStepSettings
from ember.inference.images import FrequencyWindow
from ember.inference.model import Model, ParticleResults, SamplingState, Sums
from ember.inference.mstep import initial_sigma2
from ember.inference.sampling import angular_step_deg, translation_grid
from ember.maths.symmetry import symmetry_operators
from tests.fake_device import FakeDevice
from tests.inference.test_engine import AKE_CLOSED, BOX, RADIUS, _data

CASES = {  # name → (classes, global search, pass 2 dense, norm and scale sums)
    "global, dense pass 2": (1, True, True, False),
    "global, sparse pass 2, two classes, norm and scale sums": (2, True, False, True),
    "local search": (1, False, False, False),
}


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("noisy"), AKE_CLOSED, 12, 0.05, 5)


def _estep(ds, truth, case: str, device) -> tuple[ParticleResults, Sums]:
    n_classes, global_search, _, extra = CASES[case]
    n = len(ds)
    refs = [truth, 0.7 * truth][:n_classes]
    order = 1 if global_search else 3
    n_dirs = 12 * 4**order
    sampling = SamplingState(order, 1, 2.0, 1.0, np.arange(n_dirs),
                             sigma_ang_deg=None if global_search else 2 * angular_step_deg(4))
    model = Model.initial(refs, initial_sigma2(ds, np.arange(n), RADIUS), 10.0, np.full(n_dirs, 1 / n_dirs))
    model.ssnr[:] = 10.0
    win = FrequencyWindow.build(BOX, BOX)
    coarse = FrequencyWindow.build(BOX, BOX // 2)
    st = EStepSettings(coarse, win, torch.from_numpy(translation_grid(2.0, 1.0)), 1.0, 1, ds.pixel_size,
                       norm_residuals=extra, scale_sums=extra)
    sums = Sums.empty(BOX, n_classes, 1, n_dirs, r_max=BOX // 2)
    res = ParticleResults.empty(n, n_classes)
    gen = np.random.default_rng(0)
    priors = ds.angles_deg() + gen.normal(0, 3, size=(n, 3))
    run_expectation(ds, np.arange(n), model, sampling, st, sums, res, prior_angles_deg=priors,
                    prior_offsets_px=np.zeros((n, 2)), symmetry=symmetry_operators("C1"), mask_radius_px=RADIUS,
                    batch_size=5, device=device)
    return res, sums


def test_fake_device_refuses_what_cuda_refuses():
    """The stand-in fails where CUDA would: host tensors in device operations, device→NumPy."""
    with FakeDevice() as dev:
        x = torch.zeros(3, device=dev)
        assert x.device == dev and (x + 1).device == dev
        with pytest.raises(RuntimeError, match="host tensors"):
            x + torch.ones(3)
        with pytest.raises(TypeError, match="numpy"):
            (x * 2).numpy()
        assert (x[torch.tensor([0, 2])] + torch.tensor(1.0)).device == dev  # host indices, 0-dim host values
        np.testing.assert_array_equal(x.cpu().numpy(), np.zeros(3))


@pytest.mark.parametrize("case", list(CASES))
def test_estep_on_a_device_equals_the_host_estep(noisy, monkeypatch, case):
    """Every code path of the E-step (dense and sparse pass 2, local searches, classes, the
    norm/scale sums) runs with all its tensors on the device and gives the host's numbers."""
    ds, truth = noisy
    monkeypatch.setattr(estep, "SPARSE_COST", 10**9 if CASES[case][2] else 0)
    host, host_sums = _estep(ds, truth, case, "cpu")
    mode = FakeDevice()
    with mode as dev:
        res, sums = _estep(ds, truth, case, dev)
    assert mode.device_ops > 1000  # it ran there
    assert sums.device == torch.device("cpu")  # and was added into the caller's sums
    np.testing.assert_array_equal(res.angles, host.angles)
    np.testing.assert_array_equal(res.pmax, host.pmax)
    np.testing.assert_array_equal(res.loglik, host.loglik)
    torch.testing.assert_close(sums.sigma2, host_sums.sigma2, rtol=0, atol=0)
    for a, b in zip(sums.reconstructors, host_sums.reconstructors, strict=True):
        torch.testing.assert_close(a.sums, b.sums, rtol=0, atol=0)
    np.testing.assert_array_equal(sums.pdf_direction, host_sums.pdf_direction)
    np.testing.assert_array_equal(sums.signal_product, host_sums.signal_product)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("case", list(CASES))
def test_estep_on_cuda_agrees_with_the_cpu(noisy, monkeypatch, case):
    """The same E-step on the GPU: same poses, Pmax and sums within float tolerance."""
    ds, truth = noisy
    monkeypatch.setattr(estep, "SPARSE_COST", 10**9 if CASES[case][2] else 0)
    host, host_sums = _estep(ds, truth, case, "cpu")
    res, sums = _estep(ds, truth, case, "cuda")
    np.testing.assert_allclose(res.angles, host.angles, atol=1e-3)
    np.testing.assert_allclose(res.pmax, host.pmax, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(res.loglik, host.loglik, rtol=1e-6)
    torch.testing.assert_close(sums.sigma2, host_sums.sigma2, rtol=1e-4, atol=0)
    for a, b in zip(sums.reconstructors, host_sums.reconstructors, strict=True):
        torch.testing.assert_close(a.sums, b.sums, rtol=1e-3, atol=1e-3 * float(b.sums.abs().max()))


def test_a_batch_that_does_not_fit_names_the_flag(noisy, monkeypatch):
    """A device out of memory inside a batch → one line that names --batch_size."""
    from ember.errors import EmberInputError
    from ember.inference import engine

    def full(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine, "expectation", full)
    ds, truth = noisy
    with pytest.raises(EmberInputError, match="batch of 5 particles does not fit.*--batch_size"):
        _estep(ds, truth, "local search", "cpu")
