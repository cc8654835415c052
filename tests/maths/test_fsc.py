import numpy as np
import torch

from ember.maths.fsc import fsc, resolution_shell


def shells_3d(n: int) -> np.ndarray:
    """(n, n, n//2+1) shell ROUND(|k|) of a 3D half transform (numpy's own frequency grid)."""
    k = np.fft.fftfreq(n, 1 / n)
    gz, gy, gx = np.meshgrid(k, k, np.arange(n // 2 + 1), indexing="ij")
    return np.floor(np.sqrt(gx**2 + gy**2 + gz**2) + 0.5).astype(int)


def signal_plus_noise(n: int, ssnr_of_shell, seed: int = 0):
    """Two maps s + n₁, s + n₂ with unit-variance white noises and a signal whose power per shell is
    SSNR(i) times the noise power (signal = white noise filtered by √SSNR in Fourier space)."""
    rng = np.random.default_rng(seed)
    shells = shells_3d(n)
    gain = np.sqrt(ssnr_of_shell(np.maximum(shells, 1)))
    s = np.fft.irfftn(np.fft.rfftn(rng.standard_normal((n, n, n))) * gain, s=(n, n, n), axes=(0, 1, 2))
    a, b = s + rng.standard_normal((n, n, n)), s + rng.standard_normal((n, n, n))
    counts = np.bincount(shells.ravel(), minlength=n)[: n // 2 + 1]
    return torch.from_numpy(a), torch.from_numpy(b), counts


def test_fsc_of_map_with_itself_is_one(random_object):
    curve = fsc(random_object, random_object)
    torch.testing.assert_close(curve, torch.ones_like(curve))


def test_fsc_follows_ssnr_over_one_plus_ssnr():
    """Signal + independent noise: FSC(i) = SSNR(i)/(1 + SSNR(i)) in every shell, within 4 standard
    errors (1 − ρ²)/√count. SSNR(i) = (14.5/i)⁸ falls steeply through 1 between shells 14 and 15,
    so a half-shell error in the shell index or a wrong normalisation shows."""
    n, i0 = 48, 14.5

    def ssnr(i):
        return (i0 / i) ** 8

    a, b, counts = signal_plus_noise(n, ssnr)
    curve = fsc(a, b).numpy()
    i = np.arange(1, n // 2 + 1)
    rho = ssnr(i) / (1 + ssnr(i))
    tolerance = 4 * (1 - rho**2) / np.sqrt(counts[1:])
    assert np.all(np.abs(curve[1:] - rho) < tolerance), np.round(curve[1:] - rho, 3)
    # the last shell above 0.5 is 14 (expected FSC 0.57 at 14, 0.43 at 15)
    assert resolution_shell(torch.from_numpy(curve), 0.5) == 14


def test_fsc_of_independent_noise_is_small():
    """No common signal: |FSC(i)| stays within 4/√count of 0, and is not biased to one side."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(32, 32, 32, dtype=torch.float64, generator=gen)
    b = torch.randn(32, 32, 32, dtype=torch.float64, generator=gen)
    curve = fsc(a, b).numpy()[1:]
    counts = np.bincount(shells_3d(32).ravel(), minlength=32)[1:17]
    assert np.all(np.abs(curve) * np.sqrt(counts) < 4)
    assert abs(curve.mean()) < 0.03


def test_fsc_of_scaled_map_is_one_and_negated_is_minus_one(random_object):
    assert torch.allclose(fsc(random_object, 3 * random_object)[1:], torch.ones(12, dtype=torch.float64))
    assert torch.allclose(fsc(random_object, -random_object)[1:], -torch.ones(12, dtype=torch.float64))


def test_resolution_shell_is_last_shell_above_threshold():
    curve = torch.tensor([1.0, 0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.3])
    assert resolution_shell(curve, 0.5) == 3
    assert resolution_shell(curve, 0.143) == 5
    assert resolution_shell(torch.ones(5), 0.143) == 4
