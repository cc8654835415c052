"""τ² policies of the M-step (ALGORITHM §5.4): reference power for classification, gold-standard FSC for refine."""

import torch

from ember.inference.mstep import GoldStandardTau2, ReferencePowerTau2, reference_tau2
from ember.operators.projector import Projector
from ember.operators.reconstructor import Reconstructor
from tests.conftest import blob_volume


def test_reference_tau2_is_half_the_shell_power_on_the_2d_scale():
    """A point of height h at the centre has the flat spectrum V̂ = N·FFT₃ = h/N² (2D-image scale):
    τ²(i) = h²/(2N⁴) in every shell; a Gaussian blob's τ² falls with resolution."""
    n, h = 32, 3.0
    point = torch.zeros(n, n, n, dtype=torch.float64)
    point[n // 2, n // 2, n // 2] = h
    tau2 = reference_tau2(Projector.from_volume(point, dtype=torch.complex128))
    torch.testing.assert_close(tau2, torch.full((n // 2 + 1,), h**2 / (2 * n**4), dtype=torch.float64))
    blob = reference_tau2(Projector.from_volume(blob_volume(n, blobs=((0.0, 0.0, 0.0, 8.0, 1.0),))))
    assert torch.all(blob[1:12] < blob[:11])


def test_policies_give_data_vs_prior():
    """Classification: SSNR = T·τ²/σ²_ref; refine: SSNR = T·FSC/(1−FSC), τ² = SSNR·σ²_ref."""
    rec = Reconstructor(16)
    rec.prepare()
    rec.weight[...] = 2.0  # σ²_ref = 1/(ω·2) everywhere
    sigma2_ref = rec.sigma2_ref()
    tau2 = torch.linspace(1, 2, 9, dtype=torch.float64)
    t, ssnr = ReferencePowerTau2(tau2[None], tau2_fudge=4.0)(0, rec)
    torch.testing.assert_close(ssnr, 4.0 * tau2 / sigma2_ref)
    fsc = torch.full((9,), 0.8, dtype=torch.float64)
    t, ssnr = GoldStandardTau2(fsc)(0, rec)
    torch.testing.assert_close(ssnr, torch.full((9,), 4.0, dtype=torch.float64))
    torch.testing.assert_close(t, 4.0 * sigma2_ref)
