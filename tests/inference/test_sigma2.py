"""Noise power σ²(i): initialisation from the particles (ALGORITHM §4.8) and the M-step update
(§5.5). σ² is per complex component of the forward-normalised 2D FFT (§1.3)."""

import numpy as np
import pandas as pd
import pytest
import torch

from ember.inference.model import Sums
from ember.inference.mstep import initial_sigma2, update_sigma2
from ember.io.mrc import write_map
from ember.io.particles import ParticleDataSet
from ember.io.star import ParticleTable, write_particles_star

BOX = 32
VARIANCE = 2.5  # real-space noise variance per pixel
EDGE = 5.0  # soft-mask edge (px), the default of prepare_batch / RELION --maskedge


def shells_of_half_transform(n: int) -> np.ndarray:
    """(n, n//2+1) shell ROUND(|k|) of a half transform, −1 on the kx = 0, ky < 0 mates (§1.4)."""
    ky = np.fft.fftfreq(n, 1 / n)
    ky[n // 2] = n // 2  # RELION: Nyquist row is +N/2
    kx = np.arange(n // 2 + 1)
    gy, gx = np.meshgrid(ky, kx, indexing="ij")
    shells = np.floor(np.hypot(gx, gy) + 0.5).astype(int)
    shells[(gx == 0) & (gy < 0)] = -1
    return shells


def shell_mean(values: np.ndarray, shells: np.ndarray, n: int) -> np.ndarray:
    keep = (shells >= 0) & (shells <= n // 2)
    sums = np.bincount(shells[keep], values[keep], minlength=n // 2 + 1)
    return sums / np.bincount(shells[keep], minlength=n // 2 + 1)


def spec_mask(n: int, radius: float, edge: float) -> np.ndarray:
    """§3.4 soft circle: 1 for r ≤ R, ½ + ½cos(π(r − R)/w) for R < r < R + w, 0 beyond."""
    c = np.arange(n) - n // 2
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    x = np.clip((r - radius) / edge, 0, 1)
    return 0.5 + 0.5 * np.cos(np.pi * x)


def expected_sigma2(n: int, variance: float, radius: float, n_images: int) -> np.ndarray:
    """E[σ²(i)] for white noise x of variance v masked as y = m·x + b·(1 − m), b = Σx(1−m)/Σ(1−m).

    y = Mx with M = diag(m) + u uᵀ/U (u = 1 − m, U = Σu), so with unnormalised DFTs G = DFT(m·u),
    Û = DFT(u): E|Y(k)|² = v/N⁴ · [Σm² + 2·Re(G·conj Û)/U + |Û|²·Σu²/U²] (forward normalisation
    1/N²). σ² = (⟨|Y|²⟩ − |⟨Y⟩|²)/2 over n images has expectation (n − 1)/n · E|Y|²/2, averaged over
    the pixels of each shell."""
    m = spec_mask(n, radius, EDGE)
    u = 1 - m
    big_u = u.sum()
    g, uh = np.fft.rfft2(m * u), np.fft.rfft2(u)
    power = variance / n**4 * (np.sum(m**2) + 2 * np.real(g * np.conj(uh)) / big_u + np.abs(uh) ** 2 * np.sum(u**2)
                               / big_u**2)
    return (n_images - 1) / n_images * shell_mean(power / 2, shells_of_half_transform(n), n)


def noise_dataset(tmp_path, n_images: int, seed: int = 0, common: float = 0.0) -> ParticleDataSet:
    """White noise of variance VARIANCE, plus (optionally) the same Gaussian blob of height
    `common` in every image."""
    stack = np.random.default_rng(seed).normal(scale=np.sqrt(VARIANCE), size=(n_images, BOX, BOX))
    c = np.arange(BOX) - BOX // 2
    stack += common * np.exp(-(c[:, None] ** 2 + (c[None, :] - 2) ** 2) / 18.0)
    write_map(tmp_path / "noise.mrcs", stack.astype(np.float32), 2.0)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0], "rlnImageSize": [BOX],
                           "rlnImageDimensionality": [2]})
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@noise.mrcs" for i in range(n_images)],
                              "rlnOpticsGroup": [1] * n_images})
    write_particles_star(tmp_path / "noise.star", ParticleTable(optics, particles))
    return ParticleDataSet.from_star(tmp_path / "noise.star")


def test_expected_sigma2_without_mask_is_v_over_2n2():
    """Sanity of the reference: with the mask ≈ 1 everywhere the expectation tends to v/(2N²)."""
    ref = expected_sigma2(BOX, VARIANCE, radius=21.0, n_images=10**9)
    np.testing.assert_allclose(ref[1:], VARIANCE / (2 * BOX**2), rtol=0.02)


@pytest.mark.parametrize("radius,common", [(10.0, 0.0), (17.0, 5.0)])
def test_initial_sigma2_of_white_noise(tmp_path, radius, common):
    """White noise of variance v: σ²(i) matches the exact expectation shell by shell, within
    5 standard errors (√(2/(n·Npix(i))) relative). The mask (§3.4) removes power: at R = 10 px
    σ² is about half the unmasked v/(2N²), so a missing or wrong mask fails, as does any
    wrong FFT normalisation or a missing factor ½. A signal common to all images (a blob of
    height 5, far above the noise) is removed by subtracting the average image's power."""
    n_images = 400
    ds = noise_dataset(tmp_path, n_images, common=common)
    got = initial_sigma2(ds, np.arange(n_images), radius).numpy().reshape(-1, BOX // 2 + 1)[0]  # one optics group
    ref = expected_sigma2(BOX, VARIANCE, radius, n_images)
    npix = np.bincount(shells_of_half_transform(BOX)[shells_of_half_transform(BOX) >= 0], minlength=BOX // 2 + 1)
    rel_err = np.sqrt(2 / (n_images * npix[: BOX // 2 + 1]))
    assert np.all(np.abs(got / ref - 1) < 5 * rel_err), np.round(got / ref, 3)
    # pooled over shells 1…N/2 the agreement is much tighter
    assert got[1:].mean() / ref[1:].mean() == pytest.approx(1.0, abs=0.01)
    if radius == 10.0:
        assert got[2:].mean() < 0.7 * VARIANCE / (2 * BOX**2)


def test_mask_radius_beyond_the_corners_leaves_images_unchanged(tmp_path):
    ds = noise_dataset(tmp_path, 4)
    got = initial_sigma2(ds, np.arange(4), mask_radius_px=BOX).numpy()  # corners at 22.6 px
    assert np.isfinite(got).all()


def npix_per_shell(n: int) -> np.ndarray:
    s = shells_of_half_transform(n)
    return np.bincount(s[(s >= 0) & (s <= n // 2)], minlength=n // 2 + 1).astype(float)


def hand_sums(residual_power: torch.Tensor, weight: float) -> Sums:
    """Sums of one optics group holding only the σ² statistics: Σγ|residual|² per shell and Σγ."""
    return Sums(reconstructors=[], sigma2=residual_power[None], n_images=torch.tensor([weight], dtype=torch.float64),
                pdf_direction=np.zeros((1, 0)), class_weight=np.ones(1))


def test_update_sigma2_divides_by_twice_weight_and_pixel_count():
    """σ²(i) = Σγ|residual|²_i / (2·Σγ·Npix(i)) (§5.5), Npix counted as in §1.4."""
    n, weight = 16, 7.5
    target = torch.linspace(3.0, 0.5, n // 2 + 1, dtype=torch.float64)
    sums = hand_sums(target * 2 * weight * torch.from_numpy(npix_per_shell(n)), weight)
    got = update_sigma2(sums, torch.ones(1, n // 2 + 1, dtype=torch.float64))
    torch.testing.assert_close(got[0], target)


def test_update_sigma2_fills_tiny_values_from_the_previous_shell():
    """Values < 1e−14 take the previous shell's value (§5.5), in turn along a run of empty shells;
    an empty DC shell keeps the previous model's σ²(0)."""
    n, weight = 16, 2.0
    target = torch.linspace(3.0, 0.5, n // 2 + 1, dtype=torch.float64)
    target[[0, 4, 5, 8]] = 0.0
    sums = hand_sums(target * 2 * weight * torch.from_numpy(npix_per_shell(n)), weight)
    previous = torch.full((1, n // 2 + 1), 9.0, dtype=torch.float64)
    got = update_sigma2(sums, previous)[0]
    expected = target.clone()
    expected[[4, 5]] = target[3]
    expected[8] = target[7]
    expected[0] = 9.0
    torch.testing.assert_close(got, expected)
    assert (got > 0).all()
