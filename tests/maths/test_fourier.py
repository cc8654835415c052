import pytest
import torch

from ember.maths.fourier import (
    fft2_centered,
    fftw_frequencies,
    hermitian_unique_mask_2d,
    ifft2_centered,
    resolution_angstrom,
    shell_index,
    shell_of_resolution,
    shift_phases_2d,
)


def test_fftw_frequencies_nyquist_is_positive():
    assert fftw_frequencies(4).tolist() == [0, 1, 2, -1]
    assert fftw_frequencies(6).tolist() == [0, 1, 2, 3, -2, -1]


def test_shift_hand_check():
    """ALGORITHM §1.6: N = 4, t = (1, 0) moves a 1 at array [2, 2] to [2, 3]."""
    img = torch.zeros(4, 4, dtype=torch.float64)
    img[2, 2] = 1
    phases = shift_phases_2d(4, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.isclose(phases[0, 1], torch.tensor(-1j, dtype=torch.complex128))
    out = ifft2_centered(fft2_centered(img) * phases, 4)
    assert out.argmax().item() == 2 * 4 + 3
    assert out[2, 3].item() == pytest.approx(1.0)


def test_centered_fft_dc_and_origin():
    """A delta at the origin (N/2) has a flat, real spectrum of 1/N² (forward normalisation)."""
    img = torch.zeros(8, 8, dtype=torch.float64)
    img[4, 4] = 1
    spec = fft2_centered(img)
    torch.testing.assert_close(spec, torch.full_like(spec, 1 / 64))


def test_shells_and_resolutions():
    """ALGORITHM §1.4 examples (N = 200, a = 1.5 Å)."""
    assert shell_of_resolution(10.0, 200, 1.5) == 30
    assert shell_of_resolution(40.0, 200, 1.5) == 8  # 7.5 rounds half away from zero
    assert resolution_angstrom(47, 200, 1.5) == pytest.approx(6.383, abs=1e-3)
    assert resolution_angstrom(100, 200, 1.5) == pytest.approx(3.0)
    assert shell_index(torch.tensor([[0.5, 0.0], [1.49, 0.0], [3.0, 4.0]])).tolist() == [1, 1, 5]


def test_hermitian_mask_drops_negative_ky_on_kx0():
    mask = hermitian_unique_mask_2d(4)
    # kx = 0 column, rows in FFTW order ky = 0, 1, 2, -1
    assert mask[:, 0].tolist() == [True, True, True, False]
    assert mask[:, 1:].all()
