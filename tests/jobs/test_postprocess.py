"""`ember postprocess` against RELION 3.1.3's relion_postprocess (fixtures in
tests/data/relion/postprocess, made by make_fixture.sh there), the phase-randomisation control and
clean failures on bad input."""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.mrc import read_map, write_map
from ember.jobs.postprocess import (
    PostprocessConfig,
    RelionRandom,
    apply_bfactor,
    fit_straight_line,
    fsc_weights,
    glibc_rand,
    guinier_plot,
    irfft3,
    lowpass_factor,
    postprocess,
    radius_squared,
    rfft3,
    shells_of,
)
from tests.report_check import assert_report, number

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "relion" / "postprocess"
runner = CliRunner()


def unpack(tmp: Path) -> Path:
    """half1.mrc, half2.mrc, mask.mrc and mtf.star of the fixture, decompressed into tmp."""
    for name in ("half1.mrc", "half2.mrc", "mask.mrc"):
        with gzip.open(FIXTURES / f"{name}.gz") as src, open(tmp / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    shutil.copy(FIXTURES / "mtf.star", tmp / "mtf.star")
    return tmp


def relion(name: str) -> dict:
    return starfile.read(FIXTURES / name, always_dict=True)


def test_parity_with_relion_auto_bfactor(tmp_path):
    """relion_postprocess --mask --auto_bfac --autob_lowres 10 on 1AKE half maps (box 48): the same
    final resolution and B-factor, and every FSC and Guinier column of postprocess.star, to the
    precision RELION prints (the phase randomisation draws RELION's own random numbers)."""
    d = unpack(tmp_path)
    out = tmp_path / "post"
    res = runner.invoke(app, ["postprocess", "--half1", str(d / "half1.mrc"), "--half2", str(d / "half2.mrc"),
                              "--mask", str(d / "mask.mrc"), "--o", str(out)])
    assert res.exit_code == 0, res.output
    ref, ours = relion("relion_postprocess_auto.star"), starfile.read(out / "postprocess.star", always_dict=True)
    g_ref, g = ref["general"], ours["general"]
    assert list(g) == list(g_ref)  # the same keys in RELION's order
    res_ref, b_ref = float(g_ref["rlnFinalResolution"]), float(g_ref["rlnBfactorUsedForSharpening"])
    res_ours, b_ours = float(g["rlnFinalResolution"]), float(g["rlnBfactorUsedForSharpening"])
    assert res_ours == pytest.approx(res_ref, rel=0.05) and b_ours == pytest.approx(b_ref, rel=0.15)  # the bar
    assert res_ours == pytest.approx(res_ref, rel=1e-5) and b_ours == pytest.approx(b_ref, rel=1e-4)
    assert f"{res_ref:.2f} Å" in res.output and f"{b_ref:.1f} Å²" in res.output
    for key in ("rlnRandomiseFrom", "rlnParticleBoxFractionSolventMask", "rlnFittedSlopeGuinierPlot",
                "rlnFittedInterceptGuinierPlot", "rlnCorrelationFitGuinierPlot"):
        assert float(g[key]) == pytest.approx(float(g_ref[key]), rel=1e-4, abs=1e-5), key
    for block in ("fsc", "guinier"):
        assert list(ours[block].columns) == list(ref[block].columns), block
        diff = (ours[block] - ref[block]).abs().max()
        assert (diff < 1e-4).all(), diff
    corrected = ours["fsc"]["rlnFourierShellCorrelationCorrected"] - ref["fsc"]["rlnFourierShellCorrelationCorrected"]
    assert corrected.abs().max() < 0.05  # the bar, at every shell
    for name in ("postprocess.mrc", "postprocess_masked.mrc"):
        volume, pixel = read_map(out / name)
        assert volume.shape == (48, 48, 48) and pixel == pytest.approx(2.0)
    for name in ("postprocess_fsc.png", "postprocess_guinier.png"):
        png = imread(out / name)
        assert png.ndim == 3 and png.std() > 0.01
    html = assert_report(out / "report.html", tmp_path, 3)
    assert number(html, "final resolution (FSC 0.143, masked, phase-randomisation corrected)") == f"{res_ref:.2f} Å"


def test_parity_with_relion_mtf_and_adhoc_bfactor(tmp_path):
    """--mtf (RELION's interpolation of the curve, --mtf_angpix) with --adhoc_bfac −100: the Guinier
    columns, MTF-corrected included, and the FSC columns as RELION's."""
    d = unpack(tmp_path)
    cfg = PostprocessConfig(half1=d / "half1.mrc", half2=d / "half2.mrc", mask=d / "mask.mrc", output=tmp_path / "p",
                            mtf=d / "mtf.star", mtf_angpix=1.0, adhoc_bfac=-100.0)
    result = postprocess(cfg)
    ref, ours = relion("relion_postprocess_mtf.star"), starfile.read(tmp_path / "p" / "postprocess.star",
                                                                      always_dict=True)
    assert list(ours["general"]) == list(ref["general"])
    assert result.bfactor == -100.0
    for block in ("fsc", "guinier"):
        assert list(ours[block].columns) == list(ref[block].columns), block
        assert ((ours[block] - ref[block]).abs().max() < 1e-4).all(), block


def test_glibc_rand_is_the_c_library_generator():
    """Ember's phase draws are glibc's rand() after srand(seed) (RELION's generator), seed 0 = 1."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 — only glibc has it
    except (OSError, AttributeError, TypeError):
        pytest.skip("not glibc")
    for seed in (0, 1, 42, 2**31 + 7):
        libc.srand(ctypes.c_uint(seed))
        expected = np.array([libc.rand() for _ in range(5000)])
        np.testing.assert_array_equal(glibc_rand(seed, 5000), expected)
    np.testing.assert_array_equal(glibc_rand(0, 100), glibc_rand(1, 100))
    stream = RelionRandom(7)  # consumed in pieces, as the two half maps consume it
    pieces = np.concatenate([stream.take(3), stream.take(5000), stream.take(4100)])
    np.testing.assert_array_equal(pieces, glibc_rand(7, 9103))


def shared_signal_halves(n: int, cutoff_shell: int, seed: int) -> tuple[np.ndarray, ...]:
    """Two halves sharing a structure (an elongated Gaussian with speckle inside) low-passed hard at
    `cutoff_shell`, each plus independent white noise (σ = the structure's σ): beyond the cutoff they
    are pure noise. And a tight binary mask (structure ≥ 0.2 of its maximum, no soft edge)."""
    gen = np.random.default_rng(seed)
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    structure = np.exp(-((x / 1.3) ** 2 + y**2 + (z / 0.8) ** 2) / 200.0)
    structure += 0.5 * gen.standard_normal(structure.shape) * (structure > 0.3)
    spectrum = rfft3(torch.from_numpy(structure))
    spectrum[shells_of(radius_squared(n)) > cutoff_shell] = 0
    signal = irfft3(spectrum, n).numpy()
    mask = (signal >= 0.2 * signal.max()).astype(np.float32)
    halves = [signal + signal.std() * gen.standard_normal(signal.shape) for _ in range(2)]
    return halves[0].astype(np.float32), halves[1].astype(np.float32), mask


def test_phase_randomisation_control(tmp_path):
    """Halves that share nothing beyond shell 10 (12.8 Å at box 64, 2 Å/px) and a tight binary mask:
    the masked FSC stays high beyond shell 10 (the mask's own correlation), the corrected FSC stays
    below 0.143 there and the resolution is not beyond the structure's."""
    n, pixel, cutoff = 64, 2.0, 10
    h1, h2, mask = shared_signal_halves(n, cutoff, seed=0)
    for name, vol in (("h1.mrc", h1), ("h2.mrc", h2), ("m.mrc", mask)):
        write_map(tmp_path / name, vol, pixel)
    r = postprocess(PostprocessConfig(half1=tmp_path / "h1.mrc", half2=tmp_path / "h2.mrc",
                                      mask=tmp_path / "m.mrc", output=tmp_path / "p", force_mask=True))
    beyond = slice(cutoff + 3, n // 2 + 1)
    assert r.randomize_at < cutoff
    assert r.fsc_masked[beyond].max() > 0.4  # the tight mask correlates the noise: the control is not void
    assert r.fsc_true[beyond].max() < 0.143
    assert r.resolution_shell <= cutoff + 1


def test_sharpening_pieces_match_relion_formulas():
    """FSC weighting √(2F/(1+F)) up to the last shell before F < 1e−4 (a negative F included);
    B-factor exp(−B s²/4) to Nyquist and 0 beyond; the low-pass raised cosine 1 → 0 over shells R−1 … R+1."""
    f = np.array([1.0, 0.9, 0.5, 0.3, 5e-5, 0.4])
    np.testing.assert_allclose(fsc_weights(f), [1.0, np.sqrt(1.8 / 1.9), np.sqrt(1 / 1.5), np.sqrt(0.6 / 1.3), 0, 0])
    np.testing.assert_allclose(fsc_weights(np.array([1.0, 0.6, -0.2, 0.5])), [1.0, np.sqrt(1.2 / 1.6), 0, 0])
    n, pixel = 16, 1.5
    r2 = radius_squared(n)
    ones = torch.ones(r2.shape, dtype=torch.complex128)
    b = apply_bfactor(ones, -80.0, n, pixel, r2).real
    s2 = r2.double() / (n * pixel) ** 2
    expected = torch.where(r2 <= (n // 2) ** 2, torch.exp(20.0 * s2), torch.zeros_like(s2))
    torch.testing.assert_close(b, expected)
    lp = lowpass_factor(n, pixel, n * pixel / 5, r2)  # R = shell 5
    radius = torch.sqrt(r2.double())
    assert (lp[radius < 4] == 1).all() and (lp[radius > 6] == 0).all()
    torch.testing.assert_close(lp[r2 == 25], torch.full_like(lp[r2 == 25], 0.5))


def test_guinier_fit_range_is_inclusive():
    """Shells whose resolution lies in [--autob_highres, --autob_lowres] (both ends included, as RELION)
    get weight 1: box 48 at 2 Å, 12 … 6 Å → shells 8 … 16; an exact line gives back its slope."""
    n, pixel = 48, 2.0
    r2 = radius_squared(n)
    shells = shells_of(r2)
    s2 = r2.double() / (n * pixel) ** 2
    spectrum = torch.exp(-10.0 * s2).to(torch.complex128)  # ln|F| = −10 s² exactly on each voxel
    g = guinier_plot(spectrum, shells, n, pixel, 12.0, 6.0)
    np.testing.assert_array_equal(np.nonzero(g.w)[0], np.arange(8, 17))
    assert g.x[0] == 0 and g.x[12] == pytest.approx(1 / 8.0**2)
    slope, _, corr = fit_straight_line(g)
    assert slope == pytest.approx(-10.0, rel=0.02) and corr > 0.99


@pytest.mark.parametrize(
    "case, match",
    [
        ("box", "box 32 differs"),
        ("pixel", "pixel size"),
        ("mask_range", "outside [0, 1]"),
        ("odd", "odd"),
        ("mask_box", "box 32 differs"),
    ],
)
def test_bad_input_one_line_nothing_written(tmp_path, case, match):
    """Maps of different box or pixel size, a mask outside [0, 1] or of another box, an odd box:
    exit 2, one line naming the problem, no output folder."""
    from tests.test_cli import expect_clean_failure

    gen = np.random.default_rng(0)
    n = 31 if case == "odd" else 24
    h1 = gen.standard_normal((n, n, n)).astype(np.float32)
    write_map(tmp_path / "h1.mrc", h1, 2.0)
    h2 = gen.standard_normal((32, 32, 32) if case == "box" else (n, n, n)).astype(np.float32)
    write_map(tmp_path / "h2.mrc", h2, 2.5 if case == "pixel" else 2.0)
    mask = np.ones((32, 32, 32) if case == "mask_box" else (n, n, n), np.float32)
    if case == "mask_range":
        mask[0, 0, 0] = 1.2
    write_map(tmp_path / "m.mrc", mask, 2.0)
    expect_clean_failure(["postprocess", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "h2.mrc"),
                          "--mask", str(tmp_path / "m.mrc"), "--o", str(tmp_path / "out")], match, tmp_path / "out")


def test_seed_reproducible_and_different_seeds_differ(tmp_path):
    """The same --seed gives the same randomised FSC; another seed another one (same resolution here)."""
    d = unpack(tmp_path)
    runs = [postprocess(PostprocessConfig(half1=d / "half1.mrc", half2=d / "half2.mrc", mask=d / "mask.mrc",
                                          output=tmp_path / f"p{i}", seed=s)) for i, s in enumerate((4, 4, 5))]
    np.testing.assert_array_equal(runs[0].fsc_random, runs[1].fsc_random)
    assert not np.array_equal(runs[0].fsc_random, runs[2].fsc_random)
    np.testing.assert_array_equal(runs[0].map, runs[1].map)
